"""Provider simulator: a local server speaking the OpenAI and Anthropic APIs with scripted faults.

It stands in for the real providers in tests, benchmarks and the embedded default, reached through
the official SDKs so that llmq's provider code runs its production paths. See
:mod:`llmq.simulator.server` for the routes and :mod:`llmq.simulator.faults` for fault scripts.
"""

from llmq.simulator.server import (
    BackgroundSimulator,
    SimulatorConfig,
    create_simulator_app,
    main,
    run_simulator,
)

__all__ = [
    "BackgroundSimulator",
    "SimulatorConfig",
    "create_simulator_app",
    "main",
    "run_simulator",
]
