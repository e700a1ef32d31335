"""rltune's tuner: Hydra apps that train, tune and benchmark the agents in ``algorithms``, recorded in MLflow.

``tuner.train`` trains one agent (``python -m tuner.train``); ``tuner.tracking`` is the only module that
talks to MLflow; ``tuner.progress`` and ``tuner.plots`` show and draw a run.
"""
