"""On scikit-learn's bundled digits data, the engine's MLP matches scikit-learn's MLPClassifier."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

from trainwire.engine import Model, Trainer

EPOCHS = 60
SEEDS = range(5)


def test_digits_mlp_at_least_as_accurate_as_sklearn() -> None:
    digits = load_digits()
    x, y = digits.data / 16.0, digits.target
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)

    theirs, ours = [], []
    for seed in SEEDS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # max_iter reached: that is the point
            clf = MLPClassifier(
                hidden_layer_sizes=(128,),
                activation="relu",
                solver="adam",
                learning_rate_init=1e-3,
                batch_size=32,
                max_iter=EPOCHS,
                alpha=0.0,  # no L2 penalty on either side
                n_iter_no_change=EPOCHS + 1,  # no early stopping: exactly EPOCHS epochs
                shuffle=True,
                random_state=seed,
            ).fit(x_tr, y_tr)
        assert clf.n_iter_ == EPOCHS
        theirs.append(clf.score(x_te, y_te))

        spec = {
            "input_dim": 64,
            "layers": [
                {
                    "type": "dense",
                    "units": 128,
                    "activation": "relu",
                    "kernel_initializer": "he_uniform",
                },
                {"type": "dense", "units": 10},
            ],
        }
        trainer = Trainer(
            Model.from_spec(spec, seed=seed),
            loss="softmax_cross_entropy",
            optimizer={"name": "adam", "learning_rate": 1e-3},
            batch_size=32,
            seed=seed,
        )
        trainer.fit(x_tr, y_tr, epochs=EPOCHS)
        assert trainer.epoch == EPOCHS
        ours.append(float(np.mean(np.argmax(trainer.model.predict(x_te), axis=1) == y_te)))

    assert np.mean(ours) >= 0.97
    assert np.mean(ours) >= np.mean(theirs), (ours, theirs)
