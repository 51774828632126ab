"""Log each checkpoint's features from a training loop, then follow its alignment.

Trains a small MLP on scikit-learn's digits (shipped with scikit-learn: 1,797 8×8 images), one
epoch at a time. After every epoch it logs the hidden layers' activations on a fixed probe set
of 512 images with ``reg.log(..., against=[...])``: prh stores them content-addressed and aligns
them (mutual kNN, cached) with two references — a fully trained "teacher" MLP and the raw
pixels. At the end it prints ``reg.trajectory(...)`` and draws it.

    python examples/train_and_log.py [--registry runs/.prh] [--epochs 12] [--plot trajectory.svg]
"""

import argparse
import warnings

import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

import prh


def hidden(mlp: MLPClassifier, x: np.ndarray) -> list:
    """The activations of every hidden layer (ReLU), one n × width array each."""
    out, h = [], x
    for w, b in zip(mlp.coefs_[:-1], mlp.intercepts_[:-1]):
        h = np.maximum(h @ w + b, 0.0)
        out.append(h.astype(np.float32))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--registry", default="runs/.prh")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--plot", default="trajectory.svg")
    a = ap.parse_args()

    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    probe, train_x, train_y = x[:512], x[512:], y[512:]
    try:
        reg = prh.Registry(a.registry)
    except prh.NotFound:
        reg = prh.init(a.registry)
    warnings.simplefilter("ignore", ConvergenceWarning)

    teacher = MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=300, random_state=1).fit(train_x, train_y)
    reg.log(hidden(teacher, probe), model="teacher", dataset="digits_probe", modality="vision",
            scores={"accuracy": teacher.score(probe, y[:512])}, progress=False)
    reg.log(probe.astype(np.float32), model="pixels", dataset="digits_probe", modality="vision", progress=False)

    student = MLPClassifier(hidden_layer_sizes=(48, 24), random_state=0, learning_rate_init=3e-3)
    classes = np.unique(y)
    for epoch in range(1, a.epochs + 1):
        student.partial_fit(train_x, train_y, classes=classes)
        acc = student.score(probe, y[:512])
        rows = reg.log(hidden(student, probe), model="student", checkpoint=f"epoch-{epoch:02d}", step=epoch,
                       dataset="digits_probe", modality="vision", scores={"accuracy": acc},
                       against=["teacher", "pixels"], metric="mutual_knn", k=10, progress=False)
        scores = ", ".join(f"{r['y_model']} {r['score']:.3f}" for r in rows.iter_rows(named=True))
        print(f"epoch {epoch:2d}: accuracy {acc:.3f}; alignment {scores}")

    traj = reg.trajectory(model="student", against=["teacher", "pixels"], metric="mutual_knn", plot=a.plot)
    print("trajectory:")
    print(traj)
    print(f"plot: {a.plot}")


if __name__ == "__main__":
    main()
