"""The centralised baseline: the same model trained on all the training data at once.

What federated training is measured against; never needed on a device.
"""

from __future__ import annotations

import argparse

from fedge.data import load_dataset
from fedge.models import build_model


def centralised_baseline(args: argparse.Namespace) -> float:
    """Test accuracy after as many epochs over all data as one agent sees in the whole run."""
    data = load_dataset(args.dataset, seed=args.seed)
    model = build_model(args.model, data.n_features, data.n_classes, seed=args.seed)
    model.train(
        data.x_train,
        data.y_train,
        epochs=args.rounds * args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
    )
    return float(model.evaluate(data.x_test, data.y_test)["accuracy"])
