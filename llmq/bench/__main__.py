"""``python -m llmq.bench [OPTIONS]``: the same as ``llmq bench``."""

from llmq.bench.cli import bench

if __name__ == "__main__":
    bench(prog_name="llmq bench")
