"""Prediction: Gaussian-weighted sliding windows with mirroring test-time augmentation (:mod:`.sliding_window`),
whole cases predicted back on their native grid (:mod:`.predict`), trained runs (:mod:`.model`), files, folders and
fold ensembles (:mod:`.predictor`), post-processing (:mod:`.postprocess`). Import the submodules directly: this
package itself loads nothing, so that light users (``postprocess``) do not pay for torch and MONAI."""
