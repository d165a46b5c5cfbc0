"""Molecular dynamics of one structure with ASE's integrators (``mftcalc md``): NVE (velocity Verlet), NVT by
Langevin or by Bussi's stochastic velocity rescaling; frames to an extxyz trajectory every ``interval`` steps,
resumable from its last complete frame; with a committee, each frame carries the committee's ``max_devi_f`` and
the run can stop where the committee stops agreeing (DP-GEN's exploration step).

Units: temperature K, timestep and times fs, friction 1/fs, Bussi's time constant fs; energies eV.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

ENSEMBLES = ("langevin", "bussi", "nve")


@dataclass(frozen=True)
class MDSettings:
    """One run's settings (see the module docstring for units). ``steps`` is the run's total length: a resume with
    a larger value extends the run. ``stop_devi``: stop at the first written frame whose committee ``max_devi_f``
    (eV/Å) reaches it (needs a committee)."""
    temperature: float = 300.0
    steps: int = 1000
    timestep: float = 0.5
    interval: int = 10
    ensemble: str = "langevin"
    friction: float = 0.01
    taut: float = 100.0
    seed: int = 0
    stop_devi: Optional[float] = None

    def check(self, committee: bool) -> None:
        """Refuse settings that cannot run, naming the option and the fix."""
        def positive(name: str, value: float, allow_zero: bool = False) -> None:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value) and (
                value >= 0 if allow_zero else value > 0)
            if not ok:
                raise ValueError(f"{name}={value!r}: must be a {'non-negative' if allow_zero else 'positive'} number")
        if self.ensemble not in ENSEMBLES:
            raise ValueError(f"ensemble={self.ensemble!r}: one of {', '.join(ENSEMBLES)}")
        positive("temperature (K)", self.temperature, allow_zero=self.ensemble == "nve")
        positive("timestep (fs)", self.timestep)
        positive("friction (1/fs)", self.friction)
        positive("taut (fs)", self.taut)
        for name, value in (("steps", self.steps), ("interval", self.interval)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r}: a positive whole number")
        if self.stop_devi is not None:
            positive("stop_devi (eV/Å)", self.stop_devi)
            if not committee:
                raise ValueError("stop_devi needs a committee: give the other members (--committee M1.pt M2.pt ...), "
                                 "whose disagreement with the driving model it bounds")


def provenance_path(out: Path) -> Path:
    """The run's record beside its trajectory."""
    return out.with_name(out.name + ".provenance.json")


def read_frames(out: Path) -> List[Any]:
    """The complete frames of a trajectory (ASE Atoms); a last frame cut short by a killed run is dropped."""
    import ase.io
    frames: List[Any] = []
    try:
        for atoms in ase.io.iread(out, index=":", format="extxyz"):
            frames.append(atoms)
    except Exception:             # the tail of a killed write: everything before it is whole
        pass
    return frames


def resume_state(out: Path, record: Dict[str, Any]) -> List[Any]:
    """The frames of an earlier run of the same record (``[]`` when ``out`` does not exist). A record that differs
    other than in ``steps`` is refused, naming the fields; the trajectory is rewritten (atomically) when its tail
    was cut short."""
    if not out.exists():
        return []
    record_file = provenance_path(out)
    if not record_file.exists():
        raise ValueError(f"{out} exists without its run record {record_file.name}: not a trajectory of `mftcalc md` "
                         "to resume; choose another --out or remove it")
    old = json.loads(record_file.read_text())
    changed = sorted(k for k in set(old) | set(record) if k != "steps" and old.get(k) != record.get(k))
    if changed:
        raise ValueError(f"{out} was written by a run with other settings ({', '.join(changed)} differ): resuming "
                         "would mix two runs; use the same options to continue it, or another --out")
    frames = read_frames(out)
    if not frames:
        raise ValueError(f"{out} holds no complete frame; remove it (and {record_file.name}) to start again")
    import ase.io

    from mftcalc.files import atomic_write
    started = _frame_count(out)
    if started > len(frames) + 1:                # not a cut tail: a frame in the middle does not read
        raise ValueError(f"{out}: frame {len(frames)} of {started} cannot be read, and frames after it exist; the "
                         "trajectory is damaged, not cut short: continue from a copy holding its first "
                         f"{len(frames)} frames, or start again with another --out")
    if started == len(frames) + 1:
        atomic_write(out, lambda tmp: ase.io.write(tmp, frames, format="extxyz"))
        print(f"{out}: its last frame was cut short (a killed run) and is dropped; continuing from step "
              f"{int(frames[-1].info['md_step'])}")
    return frames


def _frame_count(out: Path) -> int:
    """How many frames the file starts, complete or not (lines that are an atom count followed by a comment)."""
    lines = out.read_text().splitlines()
    count, i = 0, 0
    while i < len(lines):
        try:
            n = int(lines[i].strip())
        except ValueError:
            break
        count += 1
        i += n + 2
    return count


def run_md(atoms: Any, calc: Any, settings: MDSettings, out: Path, record: Dict[str, Any],
           committee: bool = False, progress: bool = True) -> Dict[str, Any]:
    """Run (or continue) the dynamics of ``atoms`` under ``calc``, appending a frame every ``interval`` steps to
    ``out`` (extxyz: positions, momenta, the model's energy and forces, ``info`` md_step, time_fs,
    temperature_K, and max_devi_f with a committee). Returns a summary: frames, steps done, whether it stopped
    at ``stop_devi``, the mean temperature of the frames' second half, and the NVE energy drift."""
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation

    from mftcalc.files import atomic_write_text
    record = {**record, **asdict(settings)}
    frames = resume_state(out, record)
    atomic_write_text(provenance_path(out), json.dumps(record, indent=1, sort_keys=True) + "\n")
    if frames:
        last = frames[-1]
        atoms = atoms.copy()
        atoms.set_positions(last.get_positions())
        atoms.set_cell(last.get_cell())
        atoms.set_momenta(last.get_momenta())
        step = int(last.info["md_step"])
    else:
        atoms = atoms.copy()
        step = 0
        if not np.any(atoms.get_momenta()) and settings.temperature > 0:
            MaxwellBoltzmannDistribution(atoms, temperature_K=settings.temperature,
                                         rng=np.random.default_rng([settings.seed, 0]))
            Stationary(atoms)
            if not atoms.pbc.any():
                ZeroRotation(atoms)
    atoms.calc = calc
    stopped = False
    if not frames:
        frames.append(_write_frame(atoms, step, settings, out, committee))
        stopped = _past_bound(frames[-1], settings)
    bar = None
    if progress and step < settings.steps and not stopped:
        from tqdm.auto import tqdm
        bar = tqdm(total=settings.steps, initial=step, desc="md", unit="step")
    while step < settings.steps and not stopped:
        n = min(settings.interval, settings.steps - step)
        _integrator(atoms, settings, step).run(n)
        step += n
        frames.append(_write_frame(atoms, step, settings, out, committee))
        stopped = _past_bound(frames[-1], settings)
        if bar is not None:
            bar.update(n)
    if bar is not None:
        bar.close()
    temps = np.array([f.info["temperature_K"] for f in frames])
    energies = np.array([f.info["energy_eV"] + f.info["kinetic_eV"] for f in frames])
    time_ps = np.array([f.info["time_fs"] for f in frames]) / 1000
    drift = (float(np.polyfit(time_ps, energies / len(atoms), 1)[0])       # only NVE conserves the total energy
             if settings.ensemble == "nve" and len(frames) > 2 else None)
    return {"frames": len(frames), "step": step, "stopped": stopped, "temperature_K": float(temps[len(temps) // 2:]
            .mean()), "drift_eV_per_atom_per_ps": drift,
            "max_devi_f": [f.info["max_devi_f"] for f in frames] if committee else None}


def _integrator(atoms: Any, settings: MDSettings, step: int) -> Any:
    """A fresh integrator for the next block of steps; its random stream is seeded by (seed, step), so a run
    resumed at a frame continues exactly as it would have (up to the frame's written precision)."""
    from mftcalc.geometry.units import FS
    dt = settings.timestep * FS
    rng = np.random.default_rng([settings.seed, step + 1])
    if settings.ensemble == "nve":
        from ase.md.verlet import VelocityVerlet
        return VelocityVerlet(atoms, dt)
    if settings.ensemble == "langevin":
        from ase.md.langevin import Langevin
        return Langevin(atoms, dt, temperature_K=settings.temperature, friction=settings.friction / FS,
                        fixcm=False, rng=rng)      # ASE's fixcm=True does not sample NVT exactly (deprecated)
    from ase.md.bussi import Bussi
    return Bussi(atoms, dt, temperature_K=settings.temperature, taut=settings.taut * FS, rng=rng)


def _write_frame(atoms: Any, step: int, settings: MDSettings, out: Path, committee: bool) -> Any:
    """Append the current state as one extxyz frame (and return it)."""
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator
    frame = atoms.copy()
    energy = atoms.get_potential_energy()
    frame.calc = SinglePointCalculator(frame, energy=energy, forces=atoms.get_forces())
    frame.info.update(md_step=step, time_fs=step * settings.timestep, temperature_K=float(atoms.get_temperature()),
                      energy_eV=float(energy), kinetic_eV=float(atoms.get_kinetic_energy()))
    if committee:
        frame.info["max_devi_f"] = float(atoms.calc.get_property("max_devi_f", atoms))
    ase.io.write(out, frame, format="extxyz", append=out.exists())
    return frame


def _past_bound(frame: Any, settings: MDSettings) -> bool:
    return settings.stop_devi is not None and frame.info.get("max_devi_f", 0.0) >= settings.stop_devi
