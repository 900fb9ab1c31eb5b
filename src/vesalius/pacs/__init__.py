"""A PACS in and out over DICOMweb: find studies (QIDO-RS), retrieve a series (WADO-RS), store results (STOW-RS).

:mod:`vesalius.pacs.client` speaks to the server (``dicomweb-client``, with basic or bearer authentication);
:mod:`vesalius.pacs.workflow` retrieves a series, predicts it, and stores the DICOM-SEG and the structured report
back into the same study.
"""
