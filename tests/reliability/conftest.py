import pytest


@pytest.fixture(scope="module", autouse=True)
def _no_flops_probe():
    """peak_flops times a matmul (~1 s on a busy 2-core machine) for the MFU column, once per run: not what these
    tests are about, and they start many runs."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("gpt2kit.train.peak_flops", lambda *a: 1e12)
        yield
