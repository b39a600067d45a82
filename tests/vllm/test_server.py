"""``manyminds vllm-serve`` (TRL's server mode with a mind per request), started as its own process on
127.0.0.1: minds over HTTP == the same minds in an in-process engine, bad specs are refused while the
server keeps serving, and population GRPO in server mode == colocate mode (rollouts and mind ids),
with the trained weights synced into the server (over HTTP: there is no NCCL on a CPU).
"""

import contextlib
import functools
import gc
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

if os.environ.get("MANYMINDS_REQUIRE_VLLM") != "1":
    pytest.importorskip("vllm")

import requests
from datasets import Dataset
from transformers import AutoModelForCausalLM
from vllm import SamplingParams

import manyminds.vllm as mv
from manyminds.population import Population
from manyminds.training import PopulationGRPOConfig, PopulationGRPOTrainer
from manyminds.training.grpo_vllm_server import check_server_config
from manyminds.vllm import EXTRA_ARGS_KEY
from manyminds.vllm.client import MindVLLMClient, ServerError
from manyminds.vllm.serve import GENERATE_ROUTE

STARTUP_S = 300  # the server imports vLLM, starts its engine process and loads the model (~40 s on 2 busy cores)
NEW = 8
PROMPT = "hello world number 0"
SIGMA = 0.5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_server(directory, log_path, *options, env=None):
    """``manyminds vllm-serve`` on 127.0.0.1 (a free port) as its own process; yields its base URL, stops it at the end."""
    port = free_port()
    command = [sys.executable, "-c", "from manyminds.cli import main; main()", "vllm-serve", "--model", directory,
               "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "256",
               "--enforce-eager", *options]
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1", **(env or {}))
    with open(log_path, "wb") as log:
        # its own process group: the engine core and worker processes it starts are stopped with it
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"manyminds vllm-serve exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"manyminds vllm-serve did not answer /health in {STARTUP_S} s:\n"
                            f"{log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tiny_llama, tmp_path_factory):
    """The base URL of ``manyminds vllm-serve`` on the tiny Llama."""
    with running_server(tiny_llama[0], tmp_path_factory.mktemp("server") / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def population(tiny_llama):
    return Population(tiny_llama[1], sigma=SIGMA, seed=0)


@pytest.fixture(scope="module")
def prompt_ids(tiny_llama):
    return tiny_llama[2](PROMPT).input_ids


def greedy(client, prompt_ids, specs):
    out = client.generate([prompt_ids] * len(specs), mind_specs=specs, max_tokens=NEW, temperature=0.0,
                          generation_kwargs={"ignore_eos": True})
    return out["completion_ids"]


# ---------------------------------------------------------------------- minds over HTTP

def test_minds_over_http_equal_the_in_process_engine(server, tiny_llama, population, prompt_ids):
    client = MindVLLMClient(base_url=server)
    minds = [-1, 3, 5, 3]
    got = greedy(client, prompt_ids, [None if m == -1 else population.spec(m) for m in minds])
    plain, three, five, _ = got
    assert three != plain and five != plain and three != five  # the minds change the greedy tokens
    assert got[3] == three
    llm = mv.make_llm(tiny_llama[0], dtype="float32", max_model_len=256, enforce_eager=True)
    try:
        outs = mv.generate(llm, {"prompt_token_ids": prompt_ids}, minds=minds, population=population,
                           sampling_params=SamplingParams(max_tokens=NEW, temperature=0.0, ignore_eos=True))
        assert got == mv.token_ids(outs)
    finally:
        del llm
        gc.collect()
    stats = requests.post(f"{server}/collective_rpc", json={"method": "manyminds_stats"}, timeout=30).json()
    assert stats["results"][0]["mind_steps"] > 0  # the server's engine ran the minds (not the client)


def test_completions_with_their_own_minds(server, population, prompt_ids):
    """``n`` completions of one prompt, each with its own mind (what TRL's server-mode rollouts ask for)."""
    client = MindVLLMClient(base_url=server)
    specs = [None, population.spec(3), population.spec(5), population.spec(3)]
    out = client.generate([prompt_ids], n=4, mind_specs=specs, max_tokens=NEW, temperature=0.0,
                          generation_kwargs={"ignore_eos": True})
    assert out["prompt_ids"] == [prompt_ids]
    assert out["completion_ids"] == greedy(client, prompt_ids, specs)
    with client.row_minds(specs):
        assert client.generate([prompt_ids], n=4, max_tokens=NEW, temperature=0.0,
                               generation_kwargs={"ignore_eos": True})["completion_ids"] == out["completion_ids"]


def test_bad_spec_is_refused_and_the_server_keeps_serving(server, population, prompt_ids):
    client = MindVLLMClient(base_url=server)
    bad = {"seed": 0, "mind": 1, "sigma": [0.1, 0.2]}  # 2 per-norm sigmas for a model with 5 norms
    with pytest.raises(ServerError, match=r"mind_specs\[1\].*5 norms") as err:
        greedy(client, prompt_ids, [population.spec(0), bad, None])
    assert "\n" not in str(err.value)
    raw = requests.post(f"{server}{GENERATE_ROUTE}", json={"prompts": [prompt_ids], "mind_specs": [{"mind": 1}],
                                                          "sampling_params": {"max_tokens": 2}}, timeout=30)
    assert raw.status_code == 400 and "missing key(s) seed, sigma" in raw.json()["error"]
    # a mind through vLLM's own routes would be neither checked nor salted: refused
    raw = requests.post(f"{server}/v1/completions", json={"model": client.model, "prompt": prompt_ids, "max_tokens": 2,
                                                          "vllm_xargs": {EXTRA_ARGS_KEY: "3"}}, timeout=30)
    assert raw.status_code == 400 and GENERATE_ROUTE in raw.text
    # and it still serves, minds included
    three = greedy(client, prompt_ids, [population.spec(3)])
    assert three == greedy(client, prompt_ids, [None, population.spec(3)])[1:]
    assert requests.post(f"{server}/v1/completions", json={"model": client.model, "prompt": prompt_ids,
                                                           "max_tokens": 2}, timeout=30).status_code == 200


# ---------------------------------------------------------------------- start-up errors (no vLLM server needed)

def test_no_server_fails_within_seconds_naming_the_command():
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="manyminds vllm-serve") as err:
        MindVLLMClient(base_url=f"http://127.0.0.1:{free_port()}", connection_timeout=240)
    assert time.monotonic() - start < 15 and "\n" not in str(err.value)


class _PlainServer(http.server.BaseHTTPRequestHandler):
    """What a server without the mind extension (``trl vllm-serve``) answers: health and models, no minds."""

    def do_GET(self):
        body = {"/health": b"", "/v1/models": b'{"data": [{"id": "plain"}]}'}.get(self.path)
        self.send_response(404 if body is None else 200)
        self.end_headers()
        self.wfile.write(body or b'{"detail": "Not Found"}')

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def plain_server():
    """A stand-in for ``trl vllm-serve`` on 127.0.0.1 (health and models, no mind routes); yields its URL."""
    plain = http.server.HTTPServer(("127.0.0.1", 0), _PlainServer)
    threading.Thread(target=plain.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{plain.server_address[1]}"
    finally:
        plain.shutdown()
        plain.server_close()


def test_server_without_the_extension_is_named():
    with plain_server() as url, pytest.raises(RuntimeError, match="no manyminds mind extension.*manyminds vllm-serve") \
            as err:
        MindVLLMClient(base_url=url)
    assert "\n" not in str(err.value)


def test_serve_command_checks_its_options(tiny_llama):
    from typer.testing import CliRunner

    from manyminds.cli import app

    directory = tiny_llama[0]
    result = CliRunner().invoke(app, ["vllm-serve", "--model", directory, "--port", "0"])
    assert result.exit_code == 2 and "port must be in 1..65535" in result.output
    result = CliRunner().invoke(app, ["vllm-serve", "--model", directory, "--max-num-seqz", "3"])
    assert result.exit_code == 2 and "vllm serve has the option(s) --max-num-seqz 3" in result.output


def test_server_settings_are_checked():
    class Args:
        vllm_server_timeout = 240.0
        vllm_server_base_url = None
        vllm_server_host = "127.0.0.1"
        vllm_tensor_parallel_size = 2

    with pytest.raises(ValueError, match="manyminds vllm-serve --tensor-parallel-size"):
        check_server_config(Args())
    Args.vllm_tensor_parallel_size, Args.vllm_server_timeout = 1, 0
    with pytest.raises(ValueError, match="vllm_server_timeout"):
        check_server_config(Args())


# ---------------------------------------------------------------------- population GRPO in server mode

def varied_reward(prompts, completions, **kwargs):
    return [(sum(ord(ch) * (i + 1) for i, ch in enumerate(t)) % 101) / 100 for t in completions]


@pytest.fixture
def server_mode():
    """Server mode is wired into PopulationGRPOConfig / PopulationGRPOTrainer (no patching needed)."""
    return


@contextlib.contextmanager
def float32_colocated_engine():
    """TRL builds its colocated engine with vLLM's dtype "auto", which is bfloat16 for a float32 checkpoint on a
    CPU; the server runs float32 (``--dtype float32``), so the colocated engine is pinned to float32 as well."""
    from trl.generation import vllm_generation

    original = vllm_generation.LLM
    vllm_generation.LLM = functools.partial(original, dtype="float32")
    try:
        yield
    finally:
        vllm_generation.LLM = original


def train(tiny_llama, tmp_path, mode, server=None):
    """Two GRPO steps; returns the trainer and its rollouts ``[(mind ids, completion ids, logprobs, prompt ids)]``
    per step."""
    directory, _, tokenizer = tiny_llama
    host, port = server.removeprefix("http://").split(":") if server else ("0.0.0.0", "8000")
    args = PopulationGRPOConfig(
        output_dir=str(tmp_path / mode), per_device_train_batch_size=4, num_generations=4, max_completion_length=NEW,
        max_steps=2, learning_rate=0.1, logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, seed=0,
        mind_sigma=SIGMA, bf16=False, use_vllm=True, vllm_mode=mode, vllm_max_model_length=128,
        vllm_enable_sleep_mode=False, vllm_server_host=host, vllm_server_port=int(port),
        generation_kwargs={"seed": 11})  # a seed per request: sampling independent of what the engine ran before
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    ds = Dataset.from_dict({"prompt": ["hello world", "once upon a time", "the quick brown", "numbers one"]})
    with float32_colocated_engine() if mode == "colocate" else contextlib.nullcontext():
        trainer = PopulationGRPOTrainer(model, reward_funcs=varied_reward, args=args, train_dataset=ds,
                                        processing_class=tokenizer)
    generation, rollouts = trainer.vllm_generation, []
    inner = generation.generate

    def record(prompts, images, num_generations, profiler=None):
        out = inner(prompts, images, num_generations, profiler)
        logprobs = [[step[0] for step in row] for row in out[2]]
        # the minds the engine was asked for: one spec per rollout row (prompt-major), None = the mean model
        specs = generation.llm._specs if mode == "colocate" else generation.vllm_client._row_specs
        ids = [-1 if spec is None else spec.mind for spec in specs]
        rollouts.append((ids, [list(ids) for ids in out[1]], logprobs, list(prompts)))
        return out

    generation.generate = record
    trainer.train()
    return trainer, rollouts


def hf_greedy(model, tokenizer, prompt_ids):
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW, min_new_tokens=NEW,
                             do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


def test_trainer_without_a_mind_server_stops_at_start(server_mode, tiny_llama, tmp_path):
    """No server, or one without the extension: the trainer's constructor says so in one line, within seconds."""
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="manyminds vllm-serve") as err:
        train(tiny_llama, tmp_path, "server", f"http://127.0.0.1:{free_port()}")
    assert time.monotonic() - start < 30 and "\n" not in str(err.value)
    with plain_server() as url, pytest.raises(RuntimeError, match="no manyminds mind extension") as err:
        train(tiny_llama, tmp_path, "server", url)
    assert "\n" not in str(err.value)


def test_grpo_server_mode_equals_colocate_and_syncs_weights(server, server_mode, tiny_llama, tmp_path, prompt_ids):
    directory, _, tokenizer = tiny_llama
    trainer, colocated = train(tiny_llama, tmp_path, "colocate")
    del trainer
    gc.collect()

    client = MindVLLMClient(base_url=server)
    initial = greedy(client, prompt_ids, [None])[0]
    trainer, served = train(tiny_llama, tmp_path, "server", server)
    try:
        assert isinstance(trainer.vllm_generation.vllm_client, MindVLLMClient)
        assert [ids for ids, _, _, _ in served] == [[0, 1, 2, 3], [4, 5, 6, 7]]  # fresh minds, as in colocate mode
        assert len({tuple(c) for c in served[0][1]}) > 1  # the rows' minds gave different rollouts
        # the same rollouts as colocate mode; step 2 runs on the weights synced after step 1
        assert [(ids, completions, prompts) for ids, completions, _, prompts in served] == \
            [(ids, completions, prompts) for ids, completions, _, prompts in colocated]
        # log-probs under each row's mind; tolerance: TRL's colocated engine is compiled, the server eager
        # (the plain model's log-probs of these tokens are 0.35-0.6 away at this sigma)
        for (_, _, got, _), (_, _, want, _) in zip(served, colocated):
            torch.testing.assert_close(torch.tensor(got), torch.tensor(want), atol=2e-3, rtol=0)
        logged = {k for entry in trainer.state.log_history for k in entry}
        assert "minds/unique_answers_per_group" in logged and "reward" in logged

        # the final weights, synced as TRL syncs them (over HTTP here), are the ones the server generates with
        trainer.vllm_generation.sync_weights()
        synced = greedy(client, prompt_ids, [None])[0]
        assert synced != initial
        assert synced == hf_greedy(trainer.model.eval(), tokenizer, prompt_ids)
    finally:
        # give the server its initial weights back (other tests of this module may run after this one)
        original = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
        client.update_named_params([], ((n, p.data) for n, p in original.named_parameters()))
        del trainer
        gc.collect()
    assert greedy(client, prompt_ids, [None])[0] == initial


# ---------------------------------------------------------------------- tensor parallelism

@pytest.mark.slow
def test_tensor_parallel_server(tiny_llama, tmp_path, prompt_ids):
    """Two tensor-parallel CPU workers (one core each): the same minds, and weights synced into both shards."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu() or (os.cpu_count() or 1) < 2:
        pytest.skip("a CPU build of vLLM and two cores (on GPUs: docs/vllm.md, Server mode)")
    directory, _, tokenizer = tiny_llama
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)  # a copy: its weights change below
    pop = Population(model, sigma=SIGMA, seed=0)
    with running_server(directory, tmp_path / "server.log", "--tensor-parallel-size", "2",
                        env={"VLLM_CPU_OMP_THREADS_BIND": "0|1"}) as url:
        client = MindVLLMClient(base_url=url)

        def want():
            out = [hf_greedy(model, tokenizer, prompt_ids)]
            for mind in (3, 5):
                with pop.minds([mind]):
                    out.append(hf_greedy(model, tokenizer, prompt_ids))
            return out

        specs = [None, pop.spec(3), pop.spec(5)]
        assert greedy(client, prompt_ids, specs) == want()
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
        client.update_named_params([], ((n, p.data) for n, p in model.named_parameters()))
        assert greedy(client, prompt_ids, specs) == want()
