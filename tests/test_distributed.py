"""The data-parallel eNTK operator: 2 processes (gloo, loopback) give the eigenpairs of 1."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from entk_utils import distributed  # noqa: E402
from entk_utils.kernels.eigen import lanczos  # noqa: E402
from entk_utils.kernels.operators import layer_entk_operator  # noqa: E402
from entk_utils.experiments.eigenpairs import layer_eigenpairs  # noqa: E402

LAYER, T, K, STEPS = 1, 7, 4, 40
HERE = Path(__file__).resolve().parent
CASES = [(kind, n) for kind in ("gemma3", "llama") for n in (6, 5)]  # N divisible / not divisible by 2


def tiny_model(kind: str):
    """A random 3-layer decoder of ``kind`` (``gemma3`` or ``llama``), float32, eval mode."""
    torch.manual_seed(0)
    common = dict(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=3, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=8, max_position_embeddings=32)
    if kind == "gemma3":
        config = transformers.Gemma3TextConfig(**common, sliding_window=3,
                                               layer_types=["sliding_attention", "full_attention", "sliding_attention"])
        model = transformers.Gemma3ForCausalLM(config)
    else:
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    return model.eval()


def contexts(n: int) -> torch.Tensor:
    return torch.randint(0, 50, (n, T), generator=torch.Generator().manual_seed(n))


def eigenpairs(kind: str, n: int) -> dict:
    """Eigenpairs of the tiny model's layer operator, on however many ranks are running."""
    result, stats = layer_eigenpairs(tiny_model(kind), contexts(n), LAYER, K, STEPS, progress=False, chunk_size=2)
    return {"evals": result["evals"].numpy(), "evecs": result["evecs"].numpy(), "matvecs": stats.matvecs,
            "allreduce_bytes": stats.allreduce_bytes, "allgather_bytes": stats.allgather_bytes,
            "seconds": [stats.compute_seconds, stats.allreduce_seconds, stats.allgather_seconds],
            "share": stats.comm_share}


def loss_products(n: int) -> np.ndarray:
    """Three products of the per-example next-token loss's operator (``output=``, targets
    looked up by each context's row in the whole ``input_ids``), on however many ranks run."""
    model = tiny_model("llama")
    targets = torch.randint(0, 50, (n,), generator=torch.Generator().manual_seed(1))
    U = model.get_output_embeddings().weight.detach()
    loss = lambda h, index: torch.nn.functional.cross_entropy(h @ U.T, targets[index], reduction="none")  # noqa: E731
    op = distributed.data_parallel_operator(model, contexts(n), LAYER, output=loss, chunk_size=2)
    return np.column_stack([op.matvec(v) for v in np.random.default_rng(0).standard_normal((3, n))])


def all_cases() -> dict:
    return {**{case: eigenpairs(*case) for case in CASES}, "loss": loss_products(5)}


@pytest.fixture(scope="module")
def on_two_ranks():
    """Every case on 2 processes (one spawn): [rank 0's results, rank 1's]."""
    return distributed.run_on_local_ranks(all_cases, 2)


def test_shard_counts_are_contiguous_near_equal_blocks_covering_every_context():
    for n, world in [(6, 2), (5, 2), (7, 3), (3, 3), (1024, 64), (1000, 64)]:
        counts = distributed.shard_counts(n, world)
        assert sum(counts) == n and len(counts) == world
        assert max(counts) - min(counts) <= 1 and counts == sorted(counts, reverse=True)


def test_shard_counts_reject_more_ranks_than_contexts():
    with pytest.raises(ValueError, match="3 contexts cannot be shared by 4 ranks"):
        distributed.shard_counts(3, 4)


@pytest.mark.slow  # several processes: make test runs it, make test-fast does not
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-N{c[1]}")
def test_two_processes_give_the_eigenpairs_of_one_process(case, on_two_ranks):
    """Also: both ranks hold the same eigenpairs, and one process equals the plain operator."""
    single = eigenpairs(*case)
    rank0, rank1 = on_two_ranks[0][case], on_two_ranks[1][case]
    np.testing.assert_array_equal(rank0["evals"], rank1["evals"])
    np.testing.assert_array_equal(rank0["evecs"], rank1["evecs"])
    np.testing.assert_allclose(rank0["evals"], single["evals"], rtol=1e-5)
    np.testing.assert_allclose(rank0["evecs"], single["evecs"], atol=1e-5)
    kind, n = case
    plain = layer_entk_operator(tiny_model(kind), contexts(n), LAYER, chunk_size=2)
    evals, evecs, _ = lanczos(plain, K, STEPS, progress=False)
    np.testing.assert_allclose(single["evals"], evals, rtol=1e-12)
    np.testing.assert_allclose(single["evecs"], evecs, atol=1e-12)


@pytest.mark.slow  # several processes: make test runs it, make test-fast does not
def test_an_output_function_sees_the_rows_of_the_whole_input_on_every_rank(on_two_ranks):
    single = loss_products(5)
    assert single.shape == (5, 3)
    for result in on_two_ranks:
        np.testing.assert_allclose(result["loss"], single, rtol=1e-5)


@pytest.mark.slow  # several processes: make test runs it, make test-fast does not
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-N{c[1]}")
def test_counters_hold_the_message_sizes_and_times_of_each_product(case, on_two_ranks):
    kind, n = case
    weight = tiny_model(kind).model.layers[LAYER].mlp.down_proj.weight
    for result in on_two_ranks:
        stats = result[case]
        assert stats["matvecs"] == STEPS
        assert stats["allreduce_bytes"] == weight.numel() * 4               # float32 weight-space vector
        assert stats["allgather_bytes"] == 2 * ((n + 1) // 2) * 16 * 4       # 2 ranks x largest block x d
        assert all(s > 0 for s in stats["seconds"]) and 0 < stats["share"] < 1


class DictOperator:
    """A linear stand-in for the layer operator that follows the newer interface: outputs
    ``J u`` for an explicit Jacobian over two named weights, ``rmatvec_params`` returning a
    {name: tensor} dict, and the metric as ``.metric``."""

    def __init__(self, J: torch.Tensor, metric: torch.Tensor, rows: slice, hidden: int):
        self.J, self.metric, self.hidden = J[rows.start * hidden: rows.stop * hidden], metric, hidden
        self.device, self.dtype_torch = torch.device("cpu"), torch.float64
        self.shape = (len(self.J), len(self.J))

    def rmatvec_params(self, w):
        g = self.J.T @ w.reshape(-1)
        return {"a": g[:3].reshape(3, 1), "b": g[3:]}

    def matvec_params(self, u):
        return (self.J @ torch.cat([u["a"].reshape(-1), u["b"]])).reshape(-1, self.hidden)


def dict_operator_product(n: int, hidden: int):
    """``K~ v`` of :class:`DictOperator` shared over the running ranks, and the dense answer."""
    gen = torch.Generator().manual_seed(0)
    J = torch.randn(n * hidden, 7, generator=gen, dtype=torch.float64)
    M = torch.randn(hidden, hidden, generator=gen, dtype=torch.float64)
    A = M @ M.T
    v = torch.randn(n * hidden, generator=gen, dtype=torch.float64)
    rank, world = distributed.rank_and_size()
    counts = distributed.shard_counts(n, world)
    start = sum(counts[:rank])
    op = distributed.DataParallelOperator(DictOperator(J, A, slice(start, start + counts[rank]), hidden), counts)
    IA = torch.kron(torch.eye(n, dtype=torch.float64), A)
    return op.matvec(v.numpy()), (IA @ J @ J.T @ IA @ v).numpy()


@pytest.mark.slow  # several processes: make test runs it, make test-fast does not
def test_weight_vectors_given_as_dicts_are_summed_over_ranks_in_one_collective():
    for got, expected in distributed.run_on_local_ranks(dict_operator_product, 2, 5, 3):
        np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_operator_metric_reads_metric_or_the_older_name_A():
    class New:
        metric = "m"

    class Old:
        A = "a"

    assert distributed.operator_metric(New()) == "m" and distributed.operator_metric(Old()) == "a"


@pytest.mark.slow  # several processes: make test runs it, make test-fast does not
def test_the_torchrun_launcher_listens_on_loopback_only(tmp_path):
    """Every listening socket of the launcher (its rendezvous and worker stores) and of its
    workers (gloo) is on 127.0.0.1; plain ``torchrun --standalone`` listens on all interfaces."""
    out = tmp_path / "listeners.json"
    run = subprocess.run([sys.executable, "-m", "entk_utils.distributed", "--nproc-per-node", "2",
                          str(HERE / "list_listeners.py"), str(out)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    listeners = json.loads(out.read_text())
    launcher = {row["pid"] for row in listeners if row["who"] == "launcher"}
    assert launcher and any(row["who"] == "worker" for row in listeners), listeners
    assert all(row["address"] in ("127.0.0.1", "::1") for row in listeners), listeners
