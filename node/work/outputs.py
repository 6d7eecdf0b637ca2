"""A registration's DICOM outputs, written ONE way for the worker and ``totalreg register``: the DSR (deformable
spatial registration, vectors in mm, LPS, on the current grid), the rigid REG (prior → current), the registered
prior series and the subtraction series, all in the current study (dicom_io.writers)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset

if TYPE_CHECKING:
    from dicom_io import SeriesVolume

#: output kinds a rule may ask for (``Rule.outputs``), in the order they are written
OUTPUT_KINDS = ("dsr", "rigid_reg", "registered_series", "subtraction")


def _writers():
    # reason: dicom_io's writers load highdicom and SimpleITK (~120 MB); only a process that writes results pays
    from dicom_io import writers
    return writers


def save_dicom(objs: list[tuple[str, Dataset]], folder: Path) -> list[Path]:
    """Write the datasets of :func:`dicom_outputs` into ``folder`` all or nothing (dicom_io.writers.save_objects:
    fsynced, atomic); their paths."""
    return _writers().save_objects([ds for _, ds in objs], folder)


def dicom_outputs(current: SeriesVolume, prior: SeriesVolume, result, outputs, *, software_version: str,
                  grid_spacing_mm: float = 3.0) -> list[tuple[str, Dataset]]:
    """(file name, dataset) of each requested output of ``result`` (a ``registration_core.RegistrationResult``):
    ``dsr.dcm``, ``rigid_reg.dcm``, ``registered_NNNN.dcm``, ``subtraction_NNNN.dcm``. The registered and
    subtraction series reference the DSR when it is among the outputs. ``grid_spacing_mm``: the DSR's grid."""
    w = _writers()
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
