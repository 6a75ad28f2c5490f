"""torchrun entry for the tests: csba's CLI with dropout off, BatchNorm statistics frozen and
augmentation off (the conditions under which DDP and one process compare on a CPU)."""

import os
import sys

import torch

import csba.loop as L
import csba.train as T

_create = T.create_model


def _frozen(*args, **kwargs):
    m = _create(*args, **kwargs)
    for mod in m.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    plain_train = m.train

    def train(mode=True):
        plain_train(mode)
        for mod in m.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.eval()
        return m

    m.train = train
    return m


T.create_model = _frozen
L.augment_batch = lambda xb, gen, rot90: xb  # the epoch loop's (csba.loop)
fail = os.environ.get("CSBA_TEST_FAIL_RANK")
if fail is not None and os.environ.get("RANK") == fail:
    import csba.step

    after = int(os.environ.get("CSBA_TEST_FAIL_AFTER", "0"))  # steps that succeed first
    step_call = csba.step.TrainStep.__call__
    calls = [0]

    def boom(self, x, y):
        calls[0] += 1
        if calls[0] > after:
            raise RuntimeError("injected failure")
        return step_call(self, x, y)

    csba.step.TrainStep.__call__ = boom

from csba.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
