"""A registration's DICOM outputs, written ONE way for the worker and ``totalreg register``: the DSR (deformable
spatial registration, vectors in mm, LPS, on the current grid), the rigid REG (prior → current), the registered
prior series and the subtraction series, all in the current study (dicom_io.writers)."""
from __future__ import annotations

from pydicom.dataset import Dataset

from dicom_io import SeriesVolume
from dicom_io import writers as w

#: output kinds a rule may ask for (``Rule.outputs``), in the order they are written
OUTPUT_KINDS = ("dsr", "rigid_reg", "registered_series", "subtraction")


def dicom_outputs(current: SeriesVolume, prior: SeriesVolume, result, outputs, *, software_version: str,
                  grid_spacing_mm: float = 3.0) -> list[tuple[str, Dataset]]:
    """(file name, dataset) of each requested output of ``result`` (a ``registration_core.RegistrationResult``):
    ``dsr.dcm``, ``rigid_reg.dcm``, ``registered_NNNN.dcm``, ``subtraction_NNNN.dcm``. The registered and
    subtraction series reference the DSR when it is among the outputs. ``grid_spacing_mm``: the DSR's grid."""
    outputs = set(outputs)
    objs: list[tuple[str, Dataset]] = []
    dsr = None
    if outputs & {"dsr", "registered_series", "subtraction"}:
        dsr = w.write_dsr(current, prior, result.displacement, grid_spacing_mm=grid_spacing_mm,
                          software_version=software_version)
    if "dsr" in outputs:
        objs.append(("dsr.dcm", dsr))
    if "rigid_reg" in outputs:
        objs.append(("rigid_reg.dcm", w.write_rigid_reg(current, prior, result.affine,
                                                        software_version=software_version)))
    ref = dsr if "dsr" in outputs else None
    if "registered_series" in outputs:
        series = w.write_registered_series(current, prior, result.warped, ref, software_version=software_version)
        objs.extend((f"registered_{i + 1:04d}.dcm", ds) for i, ds in enumerate(series))
    if "subtraction" in outputs:
        series = w.write_subtraction_series(current, prior, result.warped, ref, software_version=software_version)
        objs.extend((f"subtraction_{i + 1:04d}.dcm", ds) for i, ds in enumerate(series))
    return objs
