"""Runnable pipelines: proxy training with recording, training on a manifest, the demo.

- ``python -m pipelines.train_proxy``  train a proxy model, record trajectories into a lake
- ``python -m pipelines.train_subset`` train a fresh model on a manifest's samples
- ``python -m pipelines.demo``         the end-to-end job behind ``make demo``
"""
