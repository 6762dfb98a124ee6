"""A run's log holds the run's own lines: Ray's notices that say nothing about the run are removed
at their cause or at their logger (issue 28 item 5). Checked on a real local Ray in a subprocess:
Ray prints the "constructor arguments in the object store" line from C++, once per process."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# init_ray as a run starts it, the index build's chunking and embedding (Ray Data), and a Ray Train
# fit with two workers that report twice, its loop quieted as train_stage_worker's is.
SCRIPT = """
import sys, time
from pathlib import Path
import pyarrow as pa
import ray.train
from ray.train import LoggingConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from cluster.runtime import init_ray
from pipelines.world.build_index import embed_chunks
from pipelines.world.chunking import chunk_corpus
from pipelines.core.config import ClusterSection, IndexSection
from pipelines.world.tokenizer import train_tokenizer
from pipelines.steps.train import quiet_report_log

out = Path(sys.argv[1])
text = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer. "
train_tokenizer([text] * 20, 300, 1, out / "tok")
init_ray(ClusterSection())
docs = pa.table({"doc_id": ["a", "b"], "text": [text * 3, text * 2]})
chunks = chunk_corpus(docs, out / "tok", 16, 4)
vectors = embed_chunks(chunks, IndexSection(), 0.25)

def loop(config):
    quiet_report_log()
    for step in range(2):
        ray.train.report({"step": step})

TorchTrainer(
    loop,
    scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
    run_config=RunConfig(
        name="quiet", storage_path=str(out / "train"),
        logging_config=LoggingConfig(log_level="WARNING"),
    ),
).fit()
time.sleep(3)  # the workers' last lines reach the driver
print("DONE", chunks.num_rows, vectors.shape[0])
"""

NOISE = (
    "has constructor arguments in the object store",  # MapWorker(...) and PreemptionWatcher
    "Reporting training result",
)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_index_build_and_training_log_no_ray_noise(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=540,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    done = [line for line in proc.stdout.splitlines() if line.startswith("DONE")]
    assert done and int(done[0].split()[1]) > 0, log[-3000:]
    assert done[0].split()[1] == done[0].split()[2]  # every chunk embedded
    assert [line[:160] for line in log.splitlines() if any(n in line for n in NOISE)] == []


def test_quiet_report_log_quiets_the_logger_ray_train_reports_with():
    from ray.train.v2._internal.execution import context

    from pipelines.steps.train import quiet_report_log

    context.logger.setLevel(logging.NOTSET)  # as a fresh worker has it: the root's level
    quiet_report_log()
    # Ray names this logger by its file path: a rename in a Ray upgrade fails here.
    assert context.logger is logging.getLogger(context.__file__)
    assert context.logger.level == logging.WARNING


# A vLLM engine start in a fresh process, as a scorer actor starts one (actors/vllm_backend.py).
VLLM_SCRIPT = """
import sys
if __name__ == "__main__":  # vLLM spawns its engine process, which re-imports this file
    from actors.vllm_backend import VLLMBackend
    VLLMBackend(sys.argv[1], 0.05, 256)
    print("STARTED")
"""

VLLM_NOISE = (
    "FutureWarning",  # torch's deprecation of reduce_op, hit inside vLLM's Triton dispatcher
    "NUMA binding",  # torch's C++ notice that vLLM bound the engine's memory
    "Loading safetensors checkpoint shards",  # vLLM's load bar, at every start and reload
)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_vllm_engine_starts_without_library_noise(tiny_world, tmp_path):
    script = tmp_path / "start_vllm.py"
    script.write_text(VLLM_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(tiny_world.model_dir)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=270,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "STARTED" in proc.stdout, log[-3000:]
    assert [line[:160] for line in log.splitlines() if any(n in line for n in VLLM_NOISE)] == []
