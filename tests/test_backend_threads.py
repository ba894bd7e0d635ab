"""``fastcg.use_backend`` is per thread: one thread's ``with`` block never switches another's."""

import threading

import pytest
import torch

import fastcg
from fastcg.backend import get_backend, namespace


def _in_threads(*targets) -> list:
    """Run each target in its own thread; the results, or re-raise the first error."""
    results: list = [None] * len(targets)
    errors: list[BaseException] = []

    def run(i, target):
        try:
            results[i] = target()
        except BaseException as e:  # noqa: BLE001 (re-raised in the main thread)
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i, t)) for i, t in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    if errors:
        raise errors[0]
    return results


def test_two_threads_each_see_only_their_own_backend(monkeypatch):
    monkeypatch.delenv("FASTCG_BACKEND", raising=False)
    barrier = threading.Barrier(2, timeout=30)

    def worker(name):
        def body():
            seen = []
            with fastcg.use_backend(name):
                barrier.wait()  # both threads are inside their blocks now
                seen.append(get_backend())
                seen.append(namespace(False, "spherical_harmonics"))
                barrier.wait()  # ... and read while the other is still inside its own
                seen.append(get_backend())
            barrier.wait()  # the other thread's block has not leaked into this one
            seen.append(get_backend())
            return seen

        return body

    a, b = _in_threads(worker("reference"), worker("cpu"))
    assert a == ["reference", "reference", "reference", None]
    assert b == ["cpu", "fastcg", "cpu", None]


def test_ops_in_two_threads_run_their_own_backend(monkeypatch):
    # a thread forcing the reference while another runs automatically: each op call goes to its
    # own thread's choice (the reference is spied on, so a switch in the wrong thread shows)
    import fastcg.reference as reference

    monkeypatch.delenv("FASTCG_BACKEND", raising=False)
    calls = {"reference": 0, "auto": 0}
    real = reference.spherical_harmonics
    lock = threading.Lock()

    def spy(*args, **kwargs):
        with lock:
            calls[threading.current_thread().name] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(reference, "spherical_harmonics", spy)
    barrier = threading.Barrier(2, timeout=30)
    v = torch.randn(5, 3, dtype=torch.float64)

    def forced():
        threading.current_thread().name = "reference"
        with fastcg.use_backend("reference"):
            barrier.wait()
            out = [fastcg.spherical_harmonics(v, 3, True, "component") for _ in range(3)]
            barrier.wait()
        return out[-1]

    def automatic():
        threading.current_thread().name = "auto"
        barrier.wait()  # the other thread is inside use_backend("reference") now
        out = [fastcg.spherical_harmonics(v, 3, True, "component") for _ in range(3)]
        barrier.wait()
        return out[-1]

    ref_out, auto_out = _in_threads(forced, automatic)
    assert calls == {"reference": 3, "auto": 0}
    torch.testing.assert_close(ref_out, auto_out, rtol=1e-12, atol=1e-12)


def test_new_thread_starts_with_the_environment_choice(monkeypatch):
    monkeypatch.setenv("FASTCG_BACKEND", "reference")
    with fastcg.use_backend("cpu"):
        assert get_backend() == "cpu"
        (inner,) = _in_threads(get_backend)
    assert inner == "reference"  # the env var, not the parent's "cpu"
    monkeypatch.delenv("FASTCG_BACKEND")
    with fastcg.use_backend("cpu"):
        (inner,) = _in_threads(get_backend)
    assert inner is None


def test_nested_blocks_unwind_per_thread():
    with fastcg.use_backend("cpu"):
        with fastcg.use_backend("reference"):
            assert get_backend() == "reference"
        assert get_backend() == "cpu"
        with pytest.raises(ValueError, match="backend"):
            with fastcg.use_backend("tpu"):
                pass
        assert get_backend() == "cpu"
