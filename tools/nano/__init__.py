"""Train and evaluate the bundled nano MobileVLM (docs/nano.md), from the repository root:

    python -m tools.nano.train
    python -m tools.nano.evaluate
"""
