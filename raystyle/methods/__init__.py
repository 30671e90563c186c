"""The training methods that train.py runs, by name (``Config.method``); no Ray here.

A method is a pure-torch class (``CycleGAN`` in cyclegan.py, ``Distiller`` in distill.py,
``FastStyle`` in fast.py, ``AdaINMethod`` in adain.py) with one interface, so train.py runs any of them and never names one:

  from_config(cfg, device, rank, extra)   build it (``extra``: what the driver prepared, e.g.
                                           a distillation's teacher weights)
  wrap(wrapper)                            wrap its trained modules (DDP)
  train_step(real_a, real_b) -> losses     one optimisation step (0-d tensors)
  end_epoch(), lr(), step / epoch / epoch_step
  nets_state() / train_state() / rank_state() / load(nets, train_state, rank_state)
  net_names                                attributes compared across ranks (DDP check)
  train_cfg                                the config's train section (batch size in throughput)
  sample_rows()                            the last batch's images for a sample grid
  progress_text(metrics)                   its losses in a progress line
  validate(quality.Validator) -> figures   held-out figures at a validation step
  validation_metrics(paired, classifier), auto_metric(paired, classifier), loss_keys(cfg),
  uses_classifier, validates               what it can be ranked by, and what it needs
  check_data(data_dir, crop) -> (A, B)     the images it trains on (B empty: one domain)
  data_text(n_a, n_b), verb                 them, and what it does, in the run's first line
"""

from __future__ import annotations

import importlib
from typing import Any

_METHODS = {"cyclegan": "raystyle.methods.cyclegan:CycleGAN", "distill": "raystyle.methods.distill:Distiller",
            "fast": "raystyle.methods.fast:FastStyle", "adain": "raystyle.methods.adain:AdaINMethod"}


def method_class(name: str) -> Any:
    try:
        module, _, cls = _METHODS[name].partition(":")
    except KeyError:
        raise ValueError(f"unknown training method {name!r}; known: {', '.join(_METHODS)}") from None
    return getattr(importlib.import_module(module), cls)
