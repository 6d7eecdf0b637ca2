"""`totalreg register FIXED MOVING -o OUT`: register a prior CT (MOVING) to the current CT (FIXED) from files.

FIXED/MOVING are NIfTI/MHA/NRRD files or DICOM series folders. Writes OUT/displacement.nii.gz (vector float32 on
FIXED's exact grid, mm LPS, fixed p -> moving p + d(p)), OUT/warped.nii.gz (int16 HU), OUT/report.json,
OUT/qc.png and, for DICOM input, OUT/dicom/ (DSR, rigid REG, registered series). Errors a user can fix are one
line on stderr with exit code 2.
"""
from __future__ import annotations

import json
import logging
import resource
import sys
import time
from pathlib import Path

import SimpleITK as sitk

import node
from node.errors import UserError
from dicom_io import read_series
from node.work.outputs import dicom_outputs
from registration_core import RegistrationConfig, RegistrationInputError, register
from registration_core.io import read_image, write_image
from registration_core.qc import write_qc_png

log = logging.getLogger("totalreg.register")


class RegisterInputError(UserError):
    """A problem with the command's input, shown as one line."""


def add_parser(subparsers) -> None:
    """Register the ``register`` sub-command."""
    p = subparsers.add_parser(
        "register", help="register a prior CT (MOVING) to the current CT (FIXED)",
        description="Register MOVING (prior) to FIXED (current). Inputs: NIfTI/MHA/NRRD files or DICOM series "
                    "folders. Outputs in OUT: displacement.nii.gz, warped.nii.gz, report.json, qc.png "
                    "(and dicom/ for DICOM input).")
    p.add_argument("fixed", help="current CT: image file or DICOM series folder")
    p.add_argument("moving", help="prior CT: image file or DICOM series folder")
    p.add_argument("-o", "--out", required=True, help="output folder (created)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="compute device")
    p.add_argument("--iterations", type=int, default=None, help="instance-optimisation iterations (finest level)")
    p.add_argument("--weights", default=None, help="network weights (.safetensors); 'none' disables the network")
    p.add_argument("--no-qc", action="store_true", help="do not write qc.png")
    p.set_defaults(func=run)


def _read(path: str, what: str):
    """(sitk image, SeriesVolume or None) from a file or a DICOM folder."""

    p = Path(path)
    if p.is_dir():
        try:
            vol = read_series(p)
        except Exception as exc:
            msg = " ".join(str(exc).split())
            raise RegisterInputError(f"cannot read {what} DICOM series {p}: {msg}") from None
        return vol.image, vol
    return read_image(p, what=what), None


def _write_dicom(out: Path, current, prior, res) -> list[str]:
    """Write DSR, rigid REG and the registered series into out/dicom; returns the written file names."""

    folder = out / "dicom"
    folder.mkdir(parents=True, exist_ok=True)
    objs = dicom_outputs(current, prior, res, ("dsr", "rigid_reg", "registered_series"),
                         software_version=node.__version__)
    for name, ds in objs:
        ds.save_as(folder / name, enforce_file_format=True)
    return [name for name, _ in objs]


def run(args) -> int:
    """Run the registration; returns 0, or 2 with a one-line message for input problems."""


    t0 = time.perf_counter()
    out = Path(args.out)
    try:
        fixed, current = _read(args.fixed, "fixed image")
        moving, prior = _read(args.moving, "moving image")
        t_read = time.perf_counter() - t0
        cfg = RegistrationConfig(device=args.device, iterations=args.iterations, weights=args.weights)
        res = register(fixed, moving, cfg, progress=sys.stderr.isatty())
    except (RegistrationInputError, RegisterInputError) as exc:
        print(f"totalreg register: error: {exc}", file=sys.stderr)
        return 2
    t = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    files = []
    if not args.no_qc:
        write_qc_png(fixed, moving, res.warped, out / "qc.png", displacement=res.displacement, affine=res.affine,
                     title=f"{Path(args.moving).name} -> {Path(args.fixed).name}", region_weights=res.region_weights)
        files.append("qc.png")
    if current is not None and prior is not None:
        files += [f"dicom/{n}" for n in _write_dicom(out, current, prior, res)]
    del fixed, moving, current, prior
    write_image(sitk.Cast(sitk.Round(res.warped), sitk.sitkInt16), out / "warped.nii.gz")
    # float32 on disk; drop the float64 field first so that a whole-body run never holds both copies long
    disp32 = sitk.Cast(res.displacement, sitk.sitkVectorFloat32)
    res.displacement = None
    write_image(disp32, out / "displacement.nii.gz")
    del disp32
    files = ["displacement.nii.gz", "warped.nii.gz"] + files
    report = dict(res.report)
    report["times_s"] = dict(report["times_s"], read=round(t_read, 3), write=round(time.perf_counter() - t, 3),
                             command_total=round(time.perf_counter() - t0, 3))
    report["memory"] = dict(report.get("memory", {}),
                            peak_rss_bytes_command=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    report["inputs"] = {"fixed": str(args.fixed), "moving": str(args.moving)}
    report["outputs"] = files + ["report.json"]
    tmp = out / ".report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(out / "report.json")
    print(f"registered {args.moving} -> {args.fixed}: NCC {report['similarity']['affine']:.3f} (affine) -> "
          f"{report['similarity']['final']:.3f}, folding {report['folding_percent']:.3f} %, "
          f"{report['times_s']['command_total']:.1f} s; outputs in {out}")
    return 0
