"""How fast the input and the training step run, in images a second, and what to change when the
input does not keep up (`stablesweep data bench`, bench/data_path.py).

- `measure_input`: images a second the input pipeline delivers ready for the model;
- `measure_training`: images a second of the Trainer's whole step, and the run's setup time;
- `advice`: what to change, from those rates.
"""
from __future__ import annotations

import time

from stablesweep.vocab import STEP


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def measure_input(data, cfg, device: str, *, steps: int, num_workers: int | None = None) -> float:
    """Images a second the input pipeline delivers ready for the model (on the device, normalised and
    augmented as training does), over the second half of `steps` batches (a steady state: workers
    started, prefetch queues drained)."""
    import torch

    from stablesweep.data import DeviceInput
    from stablesweep.stability.precision import make_precision

    t = cfg.training
    dev = torch.device(device)
    workers = t.num_workers if num_workers is None else num_workers
    inp = DeviceInput(dev, make_precision(t.precision, dev, t.tf32).dtype, cfg.data.augment, t.seed,
                      dev.type == "cuda" and cfg.model.channels_last)
    batches = inp.batches(data.train_batches(t.batch_size, t.seed, num_workers=workers,
                                             pin_memory=dev.type == "cuda"), 0)
    half = max(1, steps // 2)
    for _ in range(steps - half):
        next(batches)
    _sync(dev)
    t0, n = time.perf_counter(), 0
    for _ in range(half):
        n += len(next(batches).labels)
    _sync(dev)
    rate = n / (time.perf_counter() - t0)
    batches.close()
    return rate


def measure_training(cfg, device: str, *, steps: int, log=None) -> tuple[float, float]:
    """(images a second of `stablesweep train`'s whole step over the second half of `steps` steps,
    seconds to set the run up: data checks, a cache build where one is due, the model)."""
    from stablesweep.config import config_from_dict
    from stablesweep.train import Trainer

    interval = max(1, steps // 10)
    run_cfg = config_from_dict(cfg.to_dict(), [f"training.steps={steps}", f"training.report_interval={interval}",
                                               "training.eval_every=0", "datasets.skip_evaluation=true",
                                               "monitor.stop_on_divergence=false"],
                               source=cfg.source, base_dir=cfg.base_dir)
    t0 = time.perf_counter()
    trainer = Trainer(run_cfg, device=device, log=log)
    setup = time.perf_counter() - t0
    marks: list[tuple[float, int]] = []
    trainer.run(lambda m, c: marks.append((time.perf_counter(), m[STEP])))
    (ta, sa) = next(m for m in marks if m[1] >= steps // 2)
    (tb, sb) = marks[-1]
    return (sb - sa) * cfg.training.batch_size / max(tb - ta, 1e-9), setup


def advice(cold: float, warm: float | None, step: float | None, workers: int, cores: int, cache: str) -> list[str]:
    """What to change, from the measured rates (images/s): input cold and warm, the whole step."""
    out = []
    best = warm if warm is not None else cold
    if workers == 0:
        out.append(f"training.num_workers is 0: the training process decodes the images itself; "
                   f"set it to {max(1, cores - 2)} (this machine has {cores} cores)")
    if step is None:
        out.append("run with --model to compare the input with the training step")
        return out
    if cold >= step:
        out.append(f"the input keeps up even decoding the files ({cold:,.0f} >= {step:,.0f} images/s): "
                   "the training step is the limit")
    elif warm is not None and warm >= step:
        out.append(f"decoding is the bottleneck ({cold:,.0f} images/s against a step of {step:,.0f}); from the "
                   f"cache the input keeps up ({warm:,.0f}): keep data.cache {cache} and build it ahead of a "
                   "sweep with `stablesweep data cache CONFIG`")
    else:
        out.append(f"the input is the bottleneck ({best:,.0f} images/s against a step of {step:,.0f}): "
                   + ("set data.cache: auto (decode once) and " if warm is None else "")
                   + f"raise training.num_workers (now {workers}, {cores} cores)")
    return out
