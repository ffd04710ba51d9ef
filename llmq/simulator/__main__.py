"""``python -m llmq.simulator --port P``: run the provider simulator in the foreground."""

from llmq.simulator.server import main

if __name__ == "__main__":
    main()
