"""Input files of a prediction: channel files grouped into cases, cases named."""

from __future__ import annotations

import pytest

from vesalius.io import write_image

pytestmark = pytest.mark.slow


def test_list_inputs_groups_channel_files_and_names_cases(tmp_path, make):
    from vesalius.errors import VesaliusError
    from vesalius.inference.inputs import list_inputs

    folder = tmp_path / "in"
    for case in ("b", "a"):
        for channel in range(2):
            write_image(make.volume(channel), folder / f"{case}_{channel:04d}.nrrd")
    cases = list_inputs(folder, channels=2)
    assert [c.case_id for c in cases] == ["a", "b"]
    assert [p.name for p in cases[0].files] == ["a_0000.nrrd", "a_0001.nrrd"] and cases[0].suffix == ".nrrd"
    with pytest.raises(VesaliusError, match="second channel of case 'a'"):  # not four one-channel cases
        list_inputs(folder, channels=1)
    (folder / "b_0001.nrrd").unlink()
    with pytest.raises(VesaliusError, match="case 'b' has 1 channel files"):
        list_inputs(folder, channels=2)
    with pytest.raises(VesaliusError, match="needs 2 channels"):
        list_inputs(folder / "a_0000.nrrd", channels=2)


def test_a_jpeg_gets_its_label_map_as_png(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """JPEG compression would change label values: the label map of a JPEG input is a PNG, other formats keep theirs."""
    import SimpleITK as sitk

    from vesalius.inference.inputs import list_inputs

    for name in ("photo.jpg", "scan.png", "volume.nrrd"):
        sitk.WriteImage(sitk.Image(8, 8, sitk.sitkUInt8), str(tmp_path / name))
    suffixes = {case.case_id: case.suffix for case in list_inputs(tmp_path)}
    assert suffixes == {"photo": ".png", "scan": ".png", "volume": ".nrrd"}
    assert list_inputs(tmp_path / "photo.jpg")[0].suffix == ".png"
