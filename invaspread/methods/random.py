"""The untrained network (Table 1 "Random CNN" 32.1, Table 2 22.4, Table 6 "Random"): nothing is
trained; the run evaluates the encoder as initialised by ``train.seed`` (use ``--epochs 0``)."""

from __future__ import annotations

from .base import Method


class RandomNetwork(Method):
    trainable = False   # Config None: no settings

    @classmethod
    def from_config(cls, cfg, encoder, num_instances):
        return cls(encoder)
