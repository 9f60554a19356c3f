"""Generate the chapter notebooks in this folder from the sources below (outputs empty).

    python colab/make_notebooks.py           # rewrite every notebook
    python colab/make_notebooks.py --check   # exit 1 if a committed notebook differs

The notebooks are committed; tests/test_notebooks.py checks that regenerating gives the same
files, runs them all at ``JAXNOTES_SIZE=small`` and checks that none carries outputs. Every
notebook starts with the same cell (:data:`SETUP`): on Colab it installs jaxnotes from the
project's repository, elsewhere it installs nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from textwrap import dedent

import nbformat

HERE = Path(__file__).resolve().parent
REPO_URL = "https://github.com/jaxnotes/jaxnotes"
COLAB_URL = "https://colab.research.google.com/github/jaxnotes/jaxnotes/blob/main/colab/{}.ipynb"

# The first cell of every notebook (the repository URL is the README's).
SETUP = f"""
# On Colab: install jaxnotes from the project's repository. Anywhere else: nothing to do.
import subprocess
import sys
import time

if "google.colab" in sys.modules:
    URL = "git+{REPO_URL}"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", URL], check=True)

import jax

from jaxnotes import notebook as nbk

START = time.perf_counter()
print(jax.devices())
print(nbk.describe())
"""


def md(text: str) -> tuple[str, str]:
    return "markdown", dedent(text).strip()


def code(text: str) -> tuple[str, str]:
    return "code", dedent(text).strip()


def header(name: str, title: str, text: str) -> tuple[str, str]:
    badge = f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({COLAB_URL.format(name)})"  # noqa: E501
    return md(f"# {title}\n\n{badge}\n\n" + dedent(text).strip())


SIZE_NOTE = md(
    """
    **Size.** `JAXNOTES_SIZE=book` (the default) runs the book's settings: Fashion-MNIST at the
    book's input size and epochs, on the GPU/TPU when the runtime has one (on Colab: *Runtime >
    Change runtime type*). `JAXNOTES_SIZE=small` runs the same code on the embedded `digits` data
    set for a few steps, which is what CI does: run `import os;
    os.environ["JAXNOTES_SIZE"] = "small"` before the training cells. Settings:
    `jaxnotes/notebook.py` and `train/presets.py`.
    """
)

# --------------------------------------------------------------------------------------------
# 01 model selection


def small_data_note(data: str, sizes: str) -> tuple[str, str]:
    """The size note of chapters 1-2, whose experiments run in seconds at either size."""
    return md(
        f"""
        **Size.** These experiments use small data sets ({data}), so they run in seconds on any
        runtime. {sizes} (`jaxnotes/notebook.py`, `CHAPTER_SETTINGS`).
        """
    )


MODEL_SELECTION = [
    header(
        "01_model_selection",
        "1. Model selection: under- and over-fitting, K-fold, random search",
        r"""
        The **training error** is measured on the data the model was fit to; the
        **generalization error** is its expected error on new data from the same distribution,
        which we estimate on data the model never saw. A model too simple for the data
        **underfits** (both errors high); one with too much **capacity** for the amount of data
        **overfits** (training error low, generalization error high). Capacity grows with the
        number of parameters: a dense layer has $(n_{in} + 1)\, n_{out}$.

        * **Polynomial demo** (the book): $y = 5 + 1.2x - 3.4\frac{x^2}{2!} + 5.6\frac{x^3}{3!} +
          \epsilon$, fit with features $x^i / i!$: 4 features fit, 2 underfit, 20 (with few
          points) overfit.
        * **Splits**: hold out a test set (30%) that is looked at once, at the very end; choose
          models on the rest. **K-fold cross-validation** splits the remaining 70% into $K$
          folds, trains $K$ times with one fold as validation, and averages.
        * **Random search**: sample hyper-parameters (learning rate and weight decay on a log
          scale), train each setting, keep the best by validation score.
        * **Time series**: the last period is the test set, never a random sample.
        * **Standardization** uses statistics of the training split only; **class imbalance**
          (9:1) can be fixed by oversampling the minority class to 1:1.

        Code: `jaxnotes.selection` (`polynomial_fit`, `k_fold_cv`, `holdout_kfold`,
        `random_search`, `imbalance_demo`, `standardization_demo`; the K folds, and the search
        trials of one width, train as one vmapped, jitted program), `jaxnotes.data`
        (`holdout_split`, `k_fold_indices`, `time_series_split`, `oversample_indices`,
        `Standardizer`), `jaxnotes.shapes.dense_params`.
        """,
    ),
    small_data_note(
        "a synthetic polynomial, scikit-learn's 8x8 `digits`",
        "`JAXNOTES_SIZE=book` (the default) uses the book's epochs and the notes' 100 search "
        "trials, `JAXNOTES_SIZE=small` fewer epochs and trials",
    ),
    code(SETUP),
    code(
        """
        import matplotlib.pyplot as plt
        import numpy as np

        from jaxnotes import data, selection, shapes, training

        settings = nbk.settings("model_selection")
        print(settings)
        """
    ),
    md(
        """
        ## Under- and over-fitting: polynomial regression

        Three fits of the same data by minibatch SGD (`selection.POLYNOMIAL_FITS`): the cubic's
        4 features recover the true weights; 2 features (a line) cannot follow the curve; 20
        features with only 10 training points drive the training loss down while the test loss
        stays high.
        """
    ),
    code(
        """
        fits = selection.polynomial_demo()
        print("true weights:", list(selection.TRUE_POLY_WEIGHTS))
        for name, fit in fits.items():
            print(
                f"{name:34} train {fit.train_loss[-1]:8.4f}  test {fit.test_loss[-1]:8.4f}  "
                f"first weights {np.round(fit.weights[:4].astype(float), 3).tolist()}"
            )
        selection.plot_polynomial_fits(fits);
        """
    ),
    md(
        """
        ## Capacity: parameters of an MLP on 8x8 digits

        One hidden layer of width $h$: $(64 + 1) h + (h + 1) 10$ parameters.
        """
    ),
    code(
        """
        for width in (8, 32, 128, 512):
            count = shapes.dense_params(64, width) + shapes.dense_params(width, 10)
            print(f"hidden width {width:4}: {count:7,} parameters")
        """
    ),
    md(
        """
        ## Splits: 70/30 holdout, then K folds on the 70%, and a time-series split

        Each row of the figure is one of the K trainings: which examples (columns, in data order)
        validate it. The folds are disjoint and together cover the development set.
        """
    ),
    code(
        """
        digits_train, digits_test = data.load("digits", "train"), data.load("digits", "test")
        images = np.concatenate([digits_train.images, digits_test.images])
        X = images.reshape(len(images), -1)  # (1797, 64) feature rows
        y = np.concatenate([digits_train.labels, digits_test.labels])
        k = settings["k"]
        dev_idx, test_idx = data.holdout_split(len(y), 0.3, seed=0)
        folds = data.k_fold_indices(len(dev_idx), k, seed=0)
        print(f"{len(y)} examples: {len(dev_idx)} development, {len(test_idx)} test")
        print("fold sizes (train, validation):", [(len(tr), len(va)) for tr, va in folds])
        series_train, series_test = data.time_series_split(100, 0.2)
        ends = [idx[[0, -1]].tolist() for idx in (series_train, series_test)]
        print(f"time series of 100 steps: train from/to {ends[0]}, test from/to {ends[1]}")

        assignment = np.zeros((k, len(dev_idx)))
        for i, (_, val) in enumerate(folds):
            assignment[i, val] = 1
        fig, ax = plt.subplots(figsize=(7, 1.8))
        ax.imshow(assignment, aspect="auto", cmap="Greys", interpolation="nearest")
        ax.set_xlabel("development example")
        ax.set_ylabel("fold")
        ax.set_title(f"{k}-fold validation sets")
        fig.tight_layout()
        """
    ),
    md(
        """
        ## K-fold cross-validation, then one final test

        `selection.holdout_kfold` runs the protocol: K-fold on the development set (the K MLPs
        train together as one population, one vmapped program), then one model trained on all
        of it and tested once on the held-out 30%; the K fold models averaged are reported too.
        """
    ),
    code(
        """
        all_digits = data.from_arrays(images, y, num_classes=10, name="digits")
        config = training.TrainConfig(
            model="mlp",
            epochs=settings["cv_epochs"],
            batch_size=32,
            learning_rate=0.1,
            momentum=0.9,
            model_kwargs={"hidden": (64,), "dropout": 0.0},
            progress=False,
        )
        protocol = selection.holdout_kfold("mlp", all_digits, k=k, config=config, seed=0)
        cv = protocol.cv
        print("validation accuracy per fold:", [round(float(a), 4) for a in cv.metrics["val_acc"]])
        print(f"K-fold estimate: {cv.mean['val_acc']:.4f} +- {cv.std['val_acc']:.4f}")
        print(
            f"final model on the test set: {protocol.test_acc:.4f}; "
            f"fold ensemble: {protocol.ensemble_test_acc:.4f}"
        )
        selection.plot_k_fold(cv);
        """
    ),
    md(
        """
        ## Random hyper-parameter search

        Learning rate and weight decay log-uniform, dropout uniform, width from a list; each
        trial trains an MLP on 70% of digits' training split and is scored on the other 30%.
        The trials of one width are one population: one compiled program for all of them.
        """
    ),
    code(
        """
        space = {**selection.DEFAULT_SPACE, "width": list(settings["search_widths"])}
        search_config = training.TrainConfig(
            model="mlp",
            epochs=settings["search_epochs"],
            batch_size=64,
            momentum=0.9,
            progress=False,
        )
        rows = selection.random_search(
            "mlp", digits_train, space, settings["search_trials"], config=search_config, seed=0
        )
        print(f"{len(rows)} trials; best five:")
        for row in rows[:5]:
            print(
                f"  lr {row['learning_rate']:.4f}  wd {row['weight_decay']:.1e}  "
                f"dropout {row['dropout']:.2f}  width {row['width']:3}  "
                f"val acc {row['val_acc']:.4f}"
            )
        selection.plot_search(rows);
        """
    ),
    md(
        """
        ## Standardization from the training split only, and class imbalance

        A series whose level drifts: standardized with training statistics, the test part sits
        off-centre (what a deployed model meets); with statistics of all the data, it looks
        centred because the test set leaked into them. Then a 9:1 two-class problem trained as
        is and with the minority oversampled to 1:1 (`data.oversample_indices`).
        """
    ),
    code(
        """
        standardization = selection.standardization_demo()
        for name, stats in standardization.items():
            print(f"{name:13} test mean {stats['test_mean']:+.3f}, std {stats['test_std']:.3f}")

        imbalance = selection.imbalance_demo()
        for name, r in imbalance.items():
            print(
                f"{name:12} minority recall {r['minority_recall']:.3f}  "
                f"majority recall {r['majority_recall']:.3f}  "
                f"balanced acc {r['balanced_accuracy']:.3f}  accuracy {r['accuracy']:.3f}"
            )
        fig, ax = plt.subplots(figsize=(5, 2.6))
        names = list(imbalance)
        positions = np.arange(len(names))
        for j, metric in enumerate(["minority_recall", "majority_recall", "balanced_accuracy"]):
            values = [imbalance[n][metric] for n in names]
            ax.bar(positions + 0.27 * (j - 1), values, 0.27, label=metric.replace("_", " "))
        ax.set_xticks(positions, names)
        ax.legend(fontsize=8)
        ax.set_title("9:1 classes: plain vs oversampled")
        fig.tight_layout()
        """
    ),
    code(
        """
        # Results
        for name, fit in fits.items():
            losses = f"train loss {fit.train_loss[-1]:.4f}, test loss {fit.test_loss[-1]:.4f}"
            print(f"polynomial {name}: {losses}")
        print(
            f"{k}-fold val acc {cv.mean['val_acc']:.4f} +- {cv.std['val_acc']:.4f} "
            f"(loss {cv.mean['val_loss']:.4f}); test acc {protocol.test_acc:.4f}"
        )
        best = rows[0]
        print(
            f"random search, {len(rows)} trials: best val acc {best['val_acc']:.4f} "
            f"(lr {best['learning_rate']:.4f}, wd {best['weight_decay']:.1e}, "
            f"dropout {best['dropout']:.2f}, width {best['width']})"
        )
        print(
            f"imbalance: minority recall {imbalance['plain']['minority_recall']:.3f} -> "
            f"{imbalance['oversampled']['minority_recall']:.3f} with oversampling"
        )
        print(f"notebook time: {time.perf_counter() - START:.1f} s")
        """
    ),
]

# --------------------------------------------------------------------------------------------
# 02 weight decay

WEIGHT_DECAY = [
    header(
        "02_weight_decay",
        "2. Weight decay",
        r"""
        Weight decay (L2 regularization) adds the squared norm of the weights to the loss,
        $$L(\mathbf w, b) + \frac{\lambda}{2} \lVert \mathbf w \rVert^2,$$
        so every SGD step first shrinks the weights, then follows the gradient:
        $$\mathbf w \leftarrow (1 - \eta\lambda)\, \mathbf w - \eta\, \nabla_{\mathbf w} L.$$
        Biases are not decayed (they do not make the model more complex).

        Two ways to write it, identical for plain SGD:

        * **from scratch**: `jaxnotes.ops.l2_penalty(w)` ($\sum w^2 / 2$) times $\lambda$ added to
          the loss;
        * **decoupled**, as an optax chain: `optax.add_decayed_weights(λ, mask)` between the
          optimizer's transform and the learning rate (`jaxnotes.optim.make_optimizer(...,
          weight_decay=λ)`), with a mask (`optim.decay_mask`) that skips every 1-D parameter
          (biases). With momentum or Adam the two differ; decoupled is what AdamW does.

        **The book's demo**: linear regression with $d = 200$ inputs and only 20 training
        examples, $y = 0.05 + \sum_i 0.01 x_i + \epsilon$. Without decay the model fits the noise
        (training loss ~0, validation loss large); decay trades a little training loss for a
        much smaller validation loss. Code: `jaxnotes.regularization.weight_decay_sweep` (all
        values of $\lambda$ in one vmapped, jitted program) and `plot_weight_decay`.
        """,
    ),
    small_data_note(
        "the book's synthetic linear regression, d = 200",
        "Both sizes train the book's 100 epochs; `JAXNOTES_SIZE=small` sweeps fewer values of λ",
    ),
    code(SETUP),
    code(
        """
        import jax.numpy as jnp
        import numpy as np

        from jaxnotes import optim, plots, regularization, shapes
        from jaxnotes.models import get_model

        settings = nbk.settings("weight_decay")
        lambdas = settings["lambdas"]
        demo_data = regularization.weight_decay_data(seed=0)
        print("train", demo_data.X_train.shape, " validation", demo_data.X_val.shape)
        """
    ),
    md("## The sweep over λ, from scratch and as optax's decoupled decay"),
    code(
        """
        sweep = regularization.weight_decay_sweep(
            lambdas, method="scratch", data=demo_data, epochs=settings["epochs"]
        )
        sweep_optax = regularization.weight_decay_sweep(
            lambdas, method="optax", data=demo_data, epochs=settings["epochs"]
        )
        gap = float(np.abs(sweep["w"] - sweep_optax["w"]).max())
        print(f"max |w_scratch - w_optax| over all λ: {gap:.2e} (the same update for SGD)")
        print(f"{'lambda':>8} {'||w||':>8} {'train loss':>11} {'val loss':>10}")
        for lam, norm, train, val in zip(
            sweep["lambdas"], sweep["w_norm"], sweep["train_loss"], sweep["val_loss"], strict=True
        ):
            print(f"{lam:8g} {norm:8.3f} {train:11.2e} {val:10.4f}")
        regularization.plot_weight_decay(sweep);
        """
    ),
    md(
        """
        The book's two figures: training and validation loss per epoch without decay (the gap
        stays huge) and with a strong one (they meet).
        """
    ),
    code(
        """
        strong = int(np.argmax(sweep["lambdas"]))
        panels = {
            f"lambda = {sweep['lambdas'][i]:g}": {
                "train": sweep["train_curve"][i],
                "validation": sweep["val_curve"][i],
            }
            for i in (0, strong)
        }
        plots.loss_panels(panels, log_y=True);
        """
    ),
    md(
        """
        ## Which parameters decay

        `optim.decay_mask` on the book's MLP: kernels (2-D) decay, biases (1-D) do not.
        """
    ),
    code(
        """
        mlp = get_model("mlp")
        params = mlp.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
        mask = optim.decay_mask(params)
        decayed = sum(
            shapes.count_params(leaf)
            for leaf, decays in zip(jax.tree.leaves(params), jax.tree.leaves(mask), strict=True)
            if decays
        )
        total = shapes.count_params(params)
        print(f"{decayed:,} of {total:,} parameters decay")

        # One step with zero gradients: all that moves the weights is the decay, -lr * wd * w.
        tx = optim.make_optimizer("sgd", 0.1, weight_decay=1e-3)
        zero_grads = jax.tree.map(jnp.zeros_like, params)
        updates, _ = tx.update(zero_grads, tx.init(params), params)
        for layer in params:
            for name in ("kernel", "bias"):
                decays = bool(mask[layer][name])
                step = float(jnp.abs(updates[layer][name]).max())
                print(f"{layer}/{name:6} decays: {decays!s:5}  largest update {step:.2e}")
        """
    ),
    code(
        """
        # Results
        best = int(np.argmin(sweep["val_loss"]))
        for label, i in (("lambda = 0", 0), ("best lambda", best)):
            print(
                f"{label} ({sweep['lambdas'][i]:g}): ||w|| {sweep['w_norm'][i]:.3f}, "
                f"train loss {sweep['train_loss'][i]:.2e}, "
                f"validation loss {sweep['val_loss'][i]:.4f}"
            )
        print(f"scratch vs optax decoupled decay: max weight difference {gap:.2e}")
        print(f"MLP parameters: {total:,}, of which decayed: {decayed:,}")
        print(f"notebook time: {time.perf_counter() - START:.1f} s")
        """
    ),
]

# --------------------------------------------------------------------------------------------
# 03 dropout

DROPOUT = [
    header(
        "03_dropout",
        "3. Dropout",
        r"""
        During training, dropout zeroes each hidden unit with probability $p$ and scales the
        survivors by $1/(1-p)$:
        $$h' = \begin{cases} 0 & \text{with probability } p \\ \dfrac{h}{1-p} & \text{otherwise,}
        \end{cases} \qquad \mathbb E[h'] = h.$$
        The expectation is unchanged, so at inference dropout is simply the identity. Every mask
        comes from an explicit PRNG key; the training loop draws a fresh key each step
        (`jax.random.fold_in(key, step)`), never reusing one.

        The book's MLP: 784 (or 64) inputs, two hidden layers of 256 with ReLU, dropout 0.2 after
        the first and 0.5 after the second (the layer nearer the input gets the smaller rate).

        **Numerics** (the notes): a NaN comes from 0/0, an inf from a too-large learning rate or
        initialisation; the training loop checks every step's loss on the device and stops
        with the step and the likely cause.

        Code: `jaxnotes.ops.dropout` (from scratch), `jaxnotes.models.MLP` (`nn.Dropout`),
        `jaxnotes.regularization.dropout_demo` / `plot_dropout`, `jaxnotes.training.fit` and its
        `TrainingDivergedError`.
        """,
    ),
    SIZE_NOTE,
    code(SETUP),
    code(
        """
        import jax.numpy as jnp
        import numpy as np

        from jaxnotes import ops, plots, regularization, shapes
        from jaxnotes.training import TrainingDivergedError

        settings = nbk.settings("dropout")
        """
    ),
    md("## From scratch: the share of zeros is p, the mean stays the same"),
    code(
        """
        key = jax.random.key(0)
        h = jnp.ones((100_000,))
        for p in (0.0, 0.2, 0.5, 0.8):
            out = ops.dropout(jax.random.fold_in(key, int(p * 10)), h, p)
            zeros, kept, mean = float(jnp.mean(out == 0)), float(out.max()), float(out.mean())
            print(f"p = {p}: zeros {zeros:.3f}, kept units = {kept:.2f}, mean {mean:.3f}")
        X = jnp.arange(16.0).reshape(2, 8)
        mask = ops.dropout(key, X, 0.5)
        same = bool(jnp.array_equal(mask, ops.dropout(key, X, 0.5)))
        other = bool(jnp.array_equal(mask, ops.dropout(jax.random.fold_in(key, 1), X, 0.5)))
        print("the same key gives the same mask:", same, "; a new key another one:", not other)
        print(np.asarray(mask))
        """
    ),
    md(
        """
        ## Dropout narrows the gap between training and test accuracy

        `regularization.dropout_demo`: the 256-256 MLP on 200 digits, 40% of their labels
        redrawn at random, so that fitting them means memorising. Without dropout the training
        accuracy reaches 100% and the test accuracy lags far behind; with dropout (from
        scratch with `ops.dropout`, or Flax's `nn.Dropout`) the gap shrinks. All three start
        from the same weights and see the same batches.
        """
    ),
    code(
        """
        demo = regularization.dropout_demo(epochs=settings["demo_epochs"])
        for variant, r in demo.items():
            print(
                f"{variant:8} train acc {r['train_acc']:.3f}  test acc {r['test_acc']:.3f}  "
                f"gap {r['gap']:+.3f}"
            )
        regularization.plot_dropout(demo);
        """
    ),
    md(
        """
        ## The book's MLP on the chapter's data set, with and without dropout

        Trained by `jaxnotes.training.fit` with the book's settings (Fashion-MNIST, lr 0.5,
        batch 256, 10 epochs) or, at the small size, on digits.
        """
    ),
    code(
        """
        runs = {}
        for label, rates in (("dropout 0.2 / 0.5", (0.2, 0.5)), ("no dropout", 0.0)):
            runs[label] = nbk.run_chapter_training("mlp", model_kwargs={"dropout": rates})
        panels = {
            label: {key: [h[key] for h in result.history] for key in ("train_acc", "test_acc")}
            for label, (result, _) in runs.items()
        }
        plots.loss_panels(panels, ylabel="accuracy");
        """
    ),
    md(
        """
        ## Numerics: a learning rate far too large

        The same MLP with a learning rate of 1000: the loss explodes within a step, and `fit`
        stops with the step and the likely causes instead of training on NaNs.
        """
    ),
    code(
        """
        try:
            nbk.run_chapter_training("mlp", learning_rate=1000.0, epochs=1)
            diverged = None
        except TrainingDivergedError as error:
            diverged = error
            print(f"{type(error).__name__} at step {error.step} ({error.kind}):\\n{error}")
        assert diverged is not None
        """
    ),
    code(
        """
        # Results
        for variant, r in demo.items():
            print(
                f"dropout demo, {variant}: train acc {r['train_acc']:.4f}, test acc "
                f"{r['test_acc']:.4f}, gap {r['gap']:+.4f}, test loss {r['test_loss']:.4f}"
            )
        for label, (result, seconds) in runs.items():
            params = shapes.count_params(result.state.params)
            print(nbk.results_line(f"MLP, {label}", result, seconds, params=params))
        print(f"lr 1000: stopped at step {diverged.step} ({diverged.kind})")
        print(f"notebook time: {time.perf_counter() - START:.1f} s")
        """
    ),
]

# --------------------------------------------------------------------------------------------
# 04 convolution

CONVOLUTION = [
    header(
        "04_convolution",
        "4. Convolution: cross-correlation, edges, learned kernels, output sizes",
        r"""
        A "convolutional" layer computes a **cross-correlation**: a $k_h \times k_w$ kernel $K$
        slides over the input $X$ and each output is a weighted sum of the window it covers,

        $$Y_{i,j} = \sum_{a,b} X_{i s_h + a,\; j s_w + b}\, K_{a,b}.$$

        A true **convolution** flips the kernel first (rotates it by 180°). Since the kernel is
        learned, a network learns the flipped kernel instead and nothing changes; deep learning
        keeps the name "convolution" for the cheaper correlation.

        **Output size.** With input size $n$, kernel $k$, total padding $p$ (both sides) and
        stride $s$: $\lfloor (n - k + p + s) / s \rfloor$. Padding $p = k - 1$ keeps the size at
        stride 1; with it, stride 2 halves the size (rounding up).

        Code: `jaxnotes.ops.corr2d`, `jaxnotes.ops.conv2d` (vectorised, jit-compiled: a sum over
        the $k_h k_w$ kernel offsets of strided slices, no loop over pixels),
        `jaxnotes.shapes.conv_output_size` / `conv_output_shape` / `same_padding`, and
        `jaxnotes.demo` (the book's edge image and the kernel-learning example).
        """,
    ),
    code(SETUP),
    code(
        """
        import jax.numpy as jnp
        import matplotlib.pyplot as plt
        import numpy as np

        from jaxnotes import demo, ops, plots, shapes

        np.set_printoptions(precision=3, suppress=True)
        """
    ),
    md(
        """
        ## Cross-correlation, and convolution as correlation with a flipped kernel

        The book's example: a 3x3 input and a 2x2 kernel give a 2x2 output.
        """
    ),
    code(
        """
        X = jnp.arange(9.0).reshape(3, 3)
        K = jnp.arange(4.0).reshape(2, 2)
        Y = ops.corr2d(X, K)
        print("corr2d(X, K) =\\n", np.asarray(Y))  # the book: [[19, 25], [37, 43]]
        assert np.allclose(Y, [[19, 25], [37, 43]])

        conv = ops.conv2d(X, K)
        flipped = ops.corr2d(X, K[::-1, ::-1])
        print("conv2d(X, K) =\\n", np.asarray(conv))
        gap = float(jnp.abs(conv - flipped).max())
        print("max |conv2d(X, K) - corr2d(X, K rotated by 180)| =", gap)
        """
    ),
    md(
        """
        ## Edge detection with the kernel [1, -1]

        The input is white (1) with a black (0) band; `[[1, -1]]` answers "how much darker is the
        next pixel on the right": +1 on the white-to-black edge, -1 on the black-to-white one,
        0 elsewhere. It sees only vertical edges: on the transposed image it finds nothing.
        """
    ),
    code(
        """
        X = demo.edge_image()
        K_edge = jnp.array([[1.0, -1.0]])
        Y = ops.corr2d(X, K_edge)
        Y_t = ops.corr2d(X.T, K_edge)
        print("Y =\\n", np.asarray(Y))
        print("edges found in X.T:", bool(jnp.any(Y_t != 0)))
        plots.images(
            [X, Y, X.T, Y_t],
            ["X", "corr2d(X, [1, -1])", "X.T", "corr2d(X.T, [1, -1])"],
            ncols=4,
        );
        """
    ),
    md(
        """
        ## Learning the kernel from data

        Given only $X$ and the edge map $Y$, gradient descent on the squared error
        $\\sum (\\mathrm{corr2d}(X, K) - Y)^2$ from $K = 0$ recovers $[1, -1]$
        (`jaxnotes.demo.learn_edge_kernel`; each step is one jitted `jax.grad`).
        """
    ),
    code(
        """
        step_counts = [0, 1, 2, 3, 4, 6, 8, 10, 15, 20]
        learned = {steps: demo.learn_edge_kernel(steps=steps) for steps in step_counts}
        K_learned, kernel_loss = learned[20]
        print("learned kernel after 20 steps:", np.asarray(K_learned), "loss", kernel_loss)

        fig, ax = plt.subplots(figsize=(4.5, 3.0))
        ax.semilogy(step_counts, [max(learned[s][1], 1e-12) for s in step_counts], "o-")
        ax.set_xlabel("gradient steps")
        ax.set_ylabel("squared error")
        ax.set_title("learning the [1, -1] kernel")
        ax.grid(True, alpha=0.3)
        """
    ),
    md(
        r"""
        ## Padding and stride

        $\lfloor (n - k + p + s) / s \rfloor$ per dimension: the book's four cases on an 8x8
        input, each checked against the shape `corr2d` really returns. An `int` padding is per
        side, a pair `(ph, pw)` per side along height and width.
        """
    ),
    code(
        """
        X8 = jnp.ones((8, 8))
        cases = [
            ((3, 3), 1, 1),  # padding k - 1 in total keeps 8x8
            ((5, 3), (2, 1), 1),  # different padding per dimension keeps 8x8
            ((3, 3), 1, 2),  # stride 2 halves: 4x4
            ((3, 5), (0, 1), (3, 4)),  # the book's odd case: 2x2
        ]
        print(f"{'kernel':8} {'padding':8} {'stride':8} formula  corr2d")
        for kernel, padding, stride in cases:
            formula = shapes.conv_output_shape((8, 8), kernel, stride, padding)
            actual = ops.corr2d(X8, jnp.ones(kernel), stride=stride, padding=padding).shape
            assert formula == actual, (formula, actual)
            print(f"{kernel!s:8} {padding!s:8} {stride!s:8} {formula!s:8} {actual}")
        print("same padding for k = 3, 4, 5:", [shapes.same_padding(k) for k in (3, 4, 5)])
        """
    ),
    md(
        """
        The same two edge kernels on a larger picture (a ring), at stride 1 with "same" padding
        and at stride 2: the output keeps the size, then halves it.
        """
    ),
    code(
        """
        yy, xx = np.mgrid[:24, :24]
        radius = np.hypot(yy - 11.5, xx - 11.5)
        ring = ((radius > 6) & (radius < 10)).astype(np.float32)
        vertical = jnp.array([[1.0, 0.0, -1.0]] * 3)  # 3x3 vertical-edge kernel
        horizontal = vertical.T
        same = (shapes.same_padding(3), shapes.same_padding(3))
        maps = {
            "ring 24x24": ring,
            "vertical s1": ops.corr2d(ring, vertical, padding=same),
            "horizontal s1": ops.corr2d(ring, horizontal, padding=same),
            "vertical s2": ops.corr2d(ring, vertical, stride=2, padding=same),
            "horizontal s2": ops.corr2d(ring, horizontal, stride=2, padding=same),
        }
        titles = [f"{name}\\n{np.shape(m)[0]}x{np.shape(m)[1]}" for name, m in maps.items()]
        plots.images(list(maps.values()), titles, ncols=5, cmap="RdBu");
        """
    ),
    code(
        """
        # Results
        book_example = ops.corr2d(jnp.arange(9.0).reshape(3, 3), jnp.arange(4.0).reshape(2, 2))
        print("corr2d of the book's 3x3 example:", np.asarray(book_example).tolist())
        print(
            f"learned edge kernel: {np.asarray(K_learned, np.float64).round(4).tolist()} "
            f"(target [[1, -1]]), squared error {kernel_loss:.2e}"
        )
        print(f"{len(cases)} padding/stride cases: formula == corr2d shape")
        print(f"notebook time: {time.perf_counter() - START:.1f} s")
        """
    ),
]

# --------------------------------------------------------------------------------------------
# 05 channels

CHANNELS = [
    header(
        "05_channels",
        "5. Multiple input and output channels, 1x1 convolution, parameter counts",
        r"""
        **Several input channels.** With $c_i$ input channels the kernel has one 2-D slice per
        channel, shape $(c_i, k_h, k_w)$; each channel is correlated with its slice and the
        results are **summed**: $Y = \sum_c \mathrm{corr2d}(X_c, K_c)$, one output channel.

        **Several output channels.** One 3-D kernel per output channel, shape
        $(c_o, c_i, k_h, k_w)$; the $c_o$ results are **stacked**. Each output channel can learn
        its own pattern (an edge direction, a colour, a texture).

        **1x1 convolution.** With $k_h = k_w = 1$ a layer sees no neighbours: at every pixel it
        multiplies the $c_i$ channel values by a $(c_o, c_i)$ matrix. It is a dense layer applied
        at every pixel, i.e. a matrix product $K \cdot X_{c_i \times hw}$; networks use it to mix
        and to reduce channels (NiN, GoogLeNet).

        **Parameters** of a convolution: $c_o \cdot c_i \cdot k_h \cdot k_w$ weights plus
        $c_o$ biases. They do not depend on the image size.

        Code: `jaxnotes.ops.corr2d_multi_in`, `corr2d_multi_in_out`, `conv1x1`;
        `jaxnotes.shapes.conv_params`, `count_params`.
        """,
    ),
    code(SETUP),
    code(
        """
        import flax.linen as nn
        import jax.numpy as jnp
        import matplotlib.pyplot as plt
        import numpy as np

        from jaxnotes import ops, plots, shapes

        np.set_printoptions(precision=3, suppress=True)
        """
    ),
    md("## Several input channels: correlate per channel, then sum (the book's example)"),
    code(
        """
        X = jnp.stack([jnp.arange(9.0), jnp.arange(1.0, 10.0)]).reshape(2, 3, 3)
        K = jnp.array([[[0.0, 1.0], [2.0, 3.0]], [[1.0, 2.0], [3.0, 4.0]]])
        Y = ops.corr2d_multi_in(X, K)
        print("X:", X.shape, " K:", K.shape, " Y:", Y.shape)
        print(np.asarray(Y))  # the book: [[56, 72], [104, 120]]
        assert np.allclose(Y, [[56, 72], [104, 120]])
        per_channel = [ops.corr2d(X[c], K[c]) for c in range(2)]
        print("sum of the per-channel corr2d equals it:", bool(jnp.allclose(sum(per_channel), Y)))
        """
    ),
    md(
        """
        ## Several output channels: one 3-D kernel each, stacked

        `K3` holds three kernels (`K`, `K + 1`, `K + 2`): three output channels, the first equal to
        the single-output result above.
        """
    ),
    code(
        """
        K3 = jnp.stack([K, K + 1, K + 2])
        Y3 = ops.corr2d_multi_in_out(X, K3)
        print("K3:", K3.shape, " Y3:", Y3.shape)
        print(np.asarray(Y3))
        assert np.allclose(Y3[0], Y)
        """
    ),
    md(
        """
        ## 1x1 convolution is a matrix product over channels

        `conv1x1` reshapes $X$ to $(c_i, h w)$ and multiplies by $K$ $(c_o, c_i)$. It matches the
        general correlation with a $1 \\times 1$ kernel. Timed on a layer of GoogLeNet's size
        (192 -> 64 channels on 28x28), the matmul form is also the cheaper one.
        """
    ),
    code(
        """
        rng = np.random.default_rng(0)
        X_small = jnp.asarray(rng.normal(size=(3, 3, 3)), jnp.float32)
        K_small = jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)
        as_matmul = ops.conv1x1(X_small, K_small)
        as_corr = ops.corr2d_multi_in_out(X_small, K_small[:, :, None, None])
        gap_1x1 = float(jnp.abs(as_matmul - as_corr).max())
        print("max |conv1x1 - corr2d_multi_in_out with 1x1 kernels| =", gap_1x1)


        def best_time(fn, *args, repeats=5):
            jax.block_until_ready(fn(*args))  # compile first
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                jax.block_until_ready(fn(*args))
                times.append(time.perf_counter() - t)
            return min(times)


        X_big = jnp.asarray(rng.normal(size=(192, 28, 28)), jnp.float32)
        K_big = jnp.asarray(rng.normal(size=(64, 192)), jnp.float32)
        conv1x1 = jax.jit(ops.conv1x1)
        t_matmul = best_time(conv1x1, X_big, K_big)
        t_corr = best_time(ops.corr2d_multi_in_out, X_big, K_big[:, :, None, None])
        print(
            f"192 -> 64 channels at 28x28: matmul {t_matmul * 1e3:.2f} ms, "
            f"corr2d_multi_in_out {t_corr * 1e3:.2f} ms"
        )
        """
    ),
    md(
        """
        ## Output channels as feature detectors

        A 3-channel picture (a ring, a disk, a diagonal ramp) and four 3-D kernels: vertical and
        horizontal edges in channel 0, a blur of all channels, and channel 1 minus channel 2.
        Each output channel is one detector applied to all input channels at once.
        """
    ),
    code(
        """
        yy, xx = np.mgrid[:24, :24]
        radius = np.hypot(yy - 11.5, xx - 11.5)
        channels = [(radius > 6) & (radius < 10), radius < 5, (yy + xx) / 46.0]
        picture = np.stack(channels).astype(np.float32)
        edge = np.array([[1.0, 0.0, -1.0]] * 3, np.float32)
        zero = np.zeros((3, 3), np.float32)
        blur = np.full((3, 3), 1 / 27, np.float32)
        center = np.pad(np.ones((1, 1), np.float32), 1)
        kernels = jnp.asarray(
            [
                [edge, zero, zero],  # vertical edges of channel 0
                [edge.T, zero, zero],  # horizontal edges of channel 0
                [blur, blur, blur],  # blur of the sum of the channels
                [zero, center, -center],  # channel 1 minus channel 2
            ]
        )
        features = ops.corr2d_multi_in_out(jnp.asarray(picture), kernels, padding=1)
        print("picture", picture.shape, "-> kernels", kernels.shape, "-> features", features.shape)
        titles = ["in: ring", "in: disk", "in: ramp", "out: vertical", "out: horizontal",
                  "out: blur", "out: disk - ramp"]  # fmt: skip
        plots.images([*picture, *features], titles, ncols=7, cmap="RdBu");
        """
    ),
    md(
        r"""
        ## Parameter counts: $c_o c_i k_h k_w + c_o$

        The formula (`jaxnotes.shapes.conv_params`) against what a Flax `nn.Conv` really
        allocates (`count_params` of its initialised variables), for layers from the book.
        A 1x1 convolution in front of a 5x5 one (GoogLeNet's trick) cuts the cost.
        """
    ),
    code(
        """
        layers = [  # (name, c_in, c_out, kernel)
            ("LeNet conv1", 1, 6, 5),
            ("LeNet conv2", 6, 16, 5),
            ("AlexNet conv1", 1, 96, 11),
            ("VGG 3x3, 256 -> 256", 256, 256, 3),
            ("1x1, 256 -> 64", 256, 64, 1),
            ("5x5, 256 -> 32", 256, 32, 5),
            ("1x1 256 -> 16, then 5x5 16 -> 32", None, None, None),
        ]
        counts = {}
        for name, c_in, c_out, k in layers:
            if c_in is None:
                counts[name] = shapes.conv_params(256, 16, 1) + shapes.conv_params(16, 32, 5)
                print(f"{name:34} {counts[name]:>9,}")
                continue
            formula = shapes.conv_params(c_in, c_out, k)
            conv = nn.Conv(c_out, (k, k))
            variables = jax.eval_shape(conv.init, jax.random.key(0), jnp.zeros((1, 32, 32, c_in)))
            flax_count = shapes.count_params(variables)
            assert formula == flax_count, (name, formula, flax_count)
            counts[name] = formula
            terms = f"{c_out}*{c_in}*{k}*{k} + {c_out}"
            print(f"{name:34} {formula:>9,}  (= {terms}; Flax: {flax_count:,})")

        fig, ax = plt.subplots(figsize=(6, 3))
        ax.barh(list(counts), list(counts.values()))
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
        ax.invert_yaxis()
        ax.grid(True, axis="x", alpha=0.3)
        fig.tight_layout()
        """
    ),
    code(
        """
        # Results
        print("multi-in example:", np.asarray(Y).tolist(), " multi-out shape:", tuple(Y3.shape))
        print(
            f"1x1 conv as matmul: max difference {gap_1x1:.1e}; "
            f"{t_matmul * 1e3:.2f} ms vs {t_corr * 1e3:.2f} ms as a general correlation"
        )
        for name, count in counts.items():
            print(f"parameters, {name}: {count:,}")
        print(f"notebook time: {time.perf_counter() - START:.1f} s")
        """
    ),
]

# --------------------------------------------------------------------------------------------
# 06 pooling

POOLING = [
    header(
        "06_pooling",
        "6. Pooling: max and average, padding and stride, per channel",
        r"""
        A pooling layer slides a window over its input like a convolution but has **no
        parameters**: it outputs the window's **maximum** or **average**. Max pooling makes a
        detector tolerant to small shifts (an edge one pixel away still wins the window); both
        shrink the map and so widen what later layers see.

        * Output size: $\lfloor (n - k + p + s) / s \rfloor$ as for convolution, with the stride
          defaulting to the window ($s = k$, non-overlapping windows): a 2x2 window with stride 2
          **halves** height and width.
        * **Per channel**: each channel is pooled on its own, so $c$ channels in give $c$
          channels out (no summing over channels as a convolution does).
        * Padding: max pooling pads with $-\infty$ (padding never wins); average pooling pads
          with zeros and divides by the full window (PyTorch's default, and the book's).

        Code: `jaxnotes.ops.pool2d` (vectorised over the window offsets),
        `jaxnotes.shapes.pool_output_size` / `pool_output_shape`; the models use
        `jaxnotes.models.layers.MaxPool` / `AvgPool`.
        """,
    ),
    code(SETUP),
    code(
        """
        import jax.numpy as jnp
        import numpy as np

        from jaxnotes import data, demo, ops, plots, shapes

        np.set_printoptions(precision=3, suppress=True)
        """
    ),
    md("## Max and average pooling (the book's 3x3 example, 2x2 window, stride 1)"),
    code(
        """
        X = jnp.arange(9.0).reshape(3, 3)
        max_pool = ops.pool2d(X, 2, mode="max", stride=1)
        avg_pool = ops.pool2d(X, 2, mode="avg", stride=1)
        print("max:\\n", np.asarray(max_pool))  # [[4, 5], [7, 8]]
        print("avg:\\n", np.asarray(avg_pool))  # [[2, 3], [5, 6]]
        assert np.allclose(max_pool, [[4, 5], [7, 8]]) and np.allclose(avg_pool, [[2, 3], [5, 6]])
        """
    ),
    md(
        """
        ## Padding and stride

        On a 4x4 input: a 3x3 window (stride 3 by default) leaves one output; padding 1 with
        stride 2 gives 2x2; a 2x3 window with padding (0, 1) and stride (2, 3) too. Each shape is
        checked against `shapes.pool_output_shape`.
        """
    ),
    code(
        """
        X4 = jnp.arange(16.0).reshape(4, 4)
        pool_cases = [
            (3, 0, None),  # stride defaults to the window
            (3, 1, 2),
            ((2, 3), (0, 1), (2, 3)),
        ]
        for window, padding, stride in pool_cases:
            out = ops.pool2d(X4, window, padding=padding, stride=stride)
            formula = shapes.pool_output_shape((4, 4), window, stride, padding)
            assert out.shape == formula, (out.shape, formula)
            print(f"window {window}, padding {padding}, stride {stride}: {formula}")
            print(np.asarray(out))
        """
    ),
    md(
        """
        ## Per channel: two channels in, two channels out

        Stacking `X4` and `X4 + 1` as two channels: pooling keeps the channels apart.
        """
    ),
    code(
        """
        X2 = jnp.stack([X4, X4 + 1])
        pooled2 = ops.pool2d(X2, 3, padding=1, stride=2)
        print(X2.shape, "->", pooled2.shape)
        print(np.asarray(pooled2))
        assert np.allclose(pooled2[1], pooled2[0] + 1)
        """
    ),
    md(
        """
        ## Shift tolerance, and pooling real images

        Top row: the edge map of the book's image, and the same image shifted one pixel to the
        right. After a 2x2 max pool with stride 1 the two maps still mark the edges at overlapping
        places. Bottom rows: digits (8x8) pooled 2x2 with stride 2 (halved to 4x4), by max and by
        average.
        """
    ),
    code(
        """
        X_edge = demo.edge_image()
        K_edge = jnp.array([[1.0, -1.0]])
        edges = ops.corr2d(X_edge, K_edge)
        shifted = ops.corr2d(jnp.roll(X_edge, 1, axis=1), K_edge)
        pooled, pooled_shifted = (jnp.abs(ops.pool2d(e, 2, stride=1)) for e in (edges, shifted))
        fires = [np.flatnonzero(np.asarray(m).max(0)).tolist() for m in (pooled, pooled_shifted)]
        common = sorted(set(fires[0]) & set(fires[1]))
        print(f"pooled edge map fires at columns {fires[0]}, of the shifted image at {fires[1]}")
        print(f"both fire at columns {common}: one per edge, despite the shift")
        plots.images(
            [edges, shifted, pooled, pooled_shifted],
            ["edges", "edges, shifted 1", "max pool 2/1", "max pool 2/1, shifted"],
            ncols=4,
            cmap="RdBu",
        )

        digits = data.load("digits", "test")
        images = jnp.asarray(digits.images[:6, :, :, 0])  # (6, 8, 8): 6 "channels"
        max_digits = ops.pool2d(images, 2, mode="max")
        avg_digits = ops.pool2d(images, 2, mode="avg")
        print("digits", images.shape, "-> pooled", max_digits.shape)
        labels = [f"{digits.labels[i]}" for i in range(6)]
        plots.images(
            [*images, *max_digits, *avg_digits],
            labels + [f"max {t}" for t in labels] + [f"avg {t}" for t in labels],
            ncols=6,
        );
        """
    ),
    code(
        """
        # Results
        print("max pool of the book's example:", np.asarray(max_pool).tolist())
        print("avg pool of the book's example:", np.asarray(avg_pool).tolist())
        print(f"{len(pool_cases)} padding/stride cases: formula == pool2d shape")
        print(f"two channels in -> {pooled2.shape[0]} out; digits 8x8 -> {max_digits.shape[1:]}")
        print(f"pooled edge maps of the image and of its 1-pixel shift both fire at {common}")
        print(f"notebook time: {time.perf_counter() - START:.1f} s")
        """
    ),
]

# --------------------------------------------------------------------------------------------
# 07 LeNet

TRAIN_NOTE = md(
    """
    ## Training

    `nbk.run_chapter_training(name)` builds a `jaxnotes.training.TrainConfig` from the chapter's
    preset for the current size (`train/presets.py`, `jaxnotes/notebook.py`) and calls
    `jaxnotes.training.fit`: the whole step (forward, loss, backward, update) is one jitted
    function, metrics stay on the device until the end of the epoch, and a NaN or exploding loss
    stops the run with its likely cause. The same run from a shell:
    `python -m train --model NAME --dataset fashion_mnist`.
    """
)

LENET = [
    header(
        "07_lenet",
        "7. LeNet: the first convolutional network",
        r"""
        LeNet-5 as the book trains it: two convolution + average-pooling stages extract features,
        three dense layers classify them; sigmoid activations throughout.

        | layer | output (28x28x1 input) | parameters |
        |---|---|---|
        | conv 6@5x5, padding 2, sigmoid | 28x28x6 | 6·1·5·5 + 6 = 156 |
        | avg pool 2/2 | 14x14x6 | 0 |
        | conv 16@5x5, sigmoid | 10x10x16 | 16·6·5·5 + 16 = 2,416 |
        | avg pool 2/2 | 5x5x16 | 0 |
        | dense 120, 84, 10 | 10 | 48,120 + 10,164 + 850 |

        61,706 parameters in all: dense layers have $(n_{in} + 1) n_{out}$, convolutions
        $c_o c_i k_h k_w + c_o$. Sizes follow $\lfloor (n - k + p + s)/s \rfloor$.

        Code: `jaxnotes.models.LeNet` (`get_model("lenet")`), `jaxnotes.shapes.summarize`,
        `jaxnotes.training.fit`, `jaxnotes.plots`.
        """,
    ),
    SIZE_NOTE,
    code(SETUP),
    code(
        """
        import jax.numpy as jnp
        import numpy as np

        from jaxnotes import data, plots, shapes
        from jaxnotes.models import get_model
        """
    ),
    md("## The network, layer by layer (shapes alone: no compute)"),
    code(
        """
        lenet = get_model("lenet")
        summary = shapes.summarize(lenet, (1, 28, 28, 1), train=False)
        print(summary)
        assert summary.total_params == 61_706
        by_formula = (
            shapes.conv_params(1, 6, 5)
            + shapes.conv_params(6, 16, 5)
            + shapes.dense_params(16 * 5 * 5, 120)
            + shapes.dense_params(120, 84)
            + shapes.dense_params(84, 10)
        )
        print(f"by the formulas: {by_formula:,} parameters")
        """
    ),
    TRAIN_NOTE,
    code(
        """
        result, seconds = nbk.run_chapter_training("lenet")
        plots.learning_curves(result.history, title="LeNet");
        """
    ),
    md(
        """
        ## What the first layer learned

        The six 5x5 kernels of the first convolution, and the six feature maps they produce on a
        test image (the convolution's output, before the sigmoid).
        """
    ),
    code(
        """
        config, limits = nbk.chapter_config("lenet")
        _, test = nbk.load_chapter_data(config, limits)
        preprocess = data.make_preprocess(config.resize, config.normalization)
        params = result.state.params
        kernels = np.asarray(params["Conv_0"]["kernel"])  # (5, 5, 1, 6)
        image = preprocess(jnp.asarray(test.images[:1]))
        model = get_model("lenet", num_classes=test.num_classes, **config.model_kwargs)
        logits, state = model.apply(
            {"params": params}, image, capture_intermediates=True, mutable=["intermediates"]
        )
        feature_maps = np.asarray(state["intermediates"]["Conv_0"]["__call__"][0][0])  # (28, 28, 6)
        print(f"test image label {int(test.labels[0])}, predicted {int(jnp.argmax(logits[0]))}")
        plots.images(
            [image[0, :, :, 0]] + [kernels[:, :, 0, i] for i in range(6)],
            ["input"] + [f"kernel {i}" for i in range(6)],
            ncols=7,
        )
        plots.images(
            [feature_maps[:, :, i] for i in range(6)],
            [f"feature map {i}" for i in range(6)],
            ncols=6,
        );
        """
    ),
    code(
        """
        # Results
        print(nbk.results_line("LeNet", result, seconds, params=shapes.count_params(params)))
        print(f"notebook time: {time.perf_counter() - START:.1f} s")
        """
    ),
]

# --------------------------------------------------------------------------------------------
# 08 AlexNet and VGG

VGG = [
    header(
        "08_vgg",
        "8. AlexNet and VGG: deeper networks from repeated blocks",
        r"""
        **AlexNet** (the bridge from LeNet): five convolutions (the first 11x11 with stride 4),
        max pooling, ReLU instead of sigmoid, two dense layers of 4096 with dropout, 224x224
        inputs. Its dense layers hold most of its parameters.

        **VGG** builds the network from one block: `vgg_block(num_convs, channels)` is
        `num_convs` 3x3 convolutions with padding 1 (size kept) and ReLU, then a 2x2 max pool
        with stride 2 (size halved). Five blocks take 224 to 7; three dense layers follow.
        VGG-11 has 1, 1, 2, 2, 2 convolutions per block; VGG-16 has 2, 2, 3, 3, 3 and
        **138,357,544** parameters at 224x224x3 with 1000 classes. The book trains VGG-11 with
        every channel count divided by 4 (`vgg11_small`).

        **Why 3x3.** The receptive field grows as $F(i) = (F(i+1) - 1)\, s_i + k_i$ from the top
        ($F = 1$) down: three stacked 3x3 convolutions see 7x7, like one 7x7 convolution, with
        $3 \cdot 9 c^2 = 27 c^2$ instead of $49 c^2$ weights and three non-linearities instead of
        one.

        Code: `jaxnotes.models.AlexNet`, `VGG`, `vgg_block`, `vgg11`, `vgg11_small`, `vgg16`,
        `stage_receptive_fields`; `jaxnotes.shapes.receptive_field`, `summarize`.
        """,
    ),
    SIZE_NOTE,
    code(SETUP),
    code(
        """
        import matplotlib.pyplot as plt

        from jaxnotes import plots, shapes
        from jaxnotes.models import VGG11_ARCH, VGG16_ARCH, get_model, stage_receptive_fields
        """
    ),
    md("## AlexNet at 224x224x1"),
    code(
        """
        alexnet_summary = shapes.summarize(get_model("alexnet"), (1, 224, 224, 1), train=False)
        print(alexnet_summary)
        """
    ),
    md("## VGG-11, VGG-11/4 and VGG-16"),
    code(
        """
        summaries = {
            "AlexNet": alexnet_summary,
            "VGG-11": shapes.summarize(get_model("vgg11"), (1, 224, 224, 1), train=False),
            "VGG-11/4": shapes.summarize(get_model("vgg11_small"), (1, 224, 224, 1), train=False),
            "VGG-16 (ImageNet)": shapes.summarize(
                get_model("vgg16", num_classes=1000), (1, 224, 224, 3), train=False
            ),
        }
        print(summaries["VGG-11/4"])
        assert summaries["VGG-16 (ImageNet)"].total_params == 138_357_544
        print()
        for name, summary in summaries.items():
            dense = sum(r.params for r in summary.rows if r.kind == "Dense")
            print(
                f"{name:18} {summary.total_params:>12,} parameters "
                f"({dense / summary.total_params:.0%} in dense layers), "
                f"{summary.total_macs / 1e9:6.2f} G mult-adds per image"
            )
        """
    ),
    md(
        r"""
        ## Receptive fields: three 3x3 convolutions see 7x7

        `shapes.receptive_field` walks $F(i) = (F(i+1) - 1) s_i + k_i$ down a stack of
        `(kernel, stride)` layers; `stage_receptive_fields` gives it per VGG block (after the
        block's convolutions / after its pool).
        """
    ),
    code(
        """
        assert shapes.receptive_field([(3, 1)] * 3) == shapes.receptive_field([(7, 1)]) == 7
        c = 256
        three_3x3 = 3 * shapes.conv_params(c, c, 3, bias=False)
        one_7x7 = shapes.conv_params(c, c, 7, bias=False)
        print(f"{c} channels: three 3x3 convs {three_3x3:,} weights, one 7x7 conv {one_7x7:,}")
        fields = {"VGG-11": stage_receptive_fields(VGG11_ARCH),
                  "VGG-16": stage_receptive_fields(VGG16_ARCH)}  # fmt: skip
        for name, per_stage in fields.items():
            print(name, "receptive field after each block (convs / pool):", per_stage)

        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.2))
        for name, per_stage in fields.items():
            ax1.plot(range(1, 6), [pool for _, pool in per_stage], "o-", label=name)
        ax1.set_xlabel("block")
        ax1.set_ylabel("receptive field (pixels)")
        ax1.set_yscale("log")
        ax1.legend()
        ax1.grid(True, alpha=0.3)
        names = list(summaries)
        ax2.barh(names, [summaries[n].total_params for n in names])
        ax2.set_xscale("log")
        ax2.set_xlabel("parameters")
        ax2.invert_yaxis()
        ax2.grid(True, axis="x", alpha=0.3)
        fig.tight_layout()
        """
    ),
    TRAIN_NOTE,
    code(
        """
        result, seconds = nbk.run_chapter_training("vgg11_small")
        plots.learning_curves(result.history, title="VGG-11/4");
        """
    ),
    code(
        """
        # Results
        trained_params = shapes.count_params(result.state.params)
        print(nbk.results_line("VGG-11/4", result, seconds, params=trained_params))
        for name, summary in summaries.items():
            print(f"{name}: {summary.total_params:,} parameters at {summary.input_shape[1:]}")
        print("receptive field of three 3x3 convs:", shapes.receptive_field([(3, 1)] * 3))
        print(f"notebook time: {time.perf_counter() - START:.1f} s")
        """
    ),
]

# --------------------------------------------------------------------------------------------
# 09 NiN

NIN = [
    header(
        "09_nin",
        "9. Network in Network: 1x1 convolutions and global average pooling",
        r"""
        A **NiN block** is one ordinary convolution followed by two 1x1 convolutions, each with
        ReLU. A 1x1 convolution is a dense layer applied at every pixel, so the block is
        "convolution, then a small MLP per pixel".

        NiN has **no dense layers** at all: the last block has as many channels as there are
        classes, and **global average pooling** turns each channel's map into one logit, whatever
        the input size. AlexNet's two 4096-wide dense layers hold almost all of its parameters;
        without them NiN needs about 20 times fewer.

        Shapes at 224x224x1: 11x11 stride 4 (96) -> 54, pool -> 26; 5x5 (256) -> 26, pool -> 12;
        3x3 (384) -> 12, pool -> 5; 3x3 (classes) -> 5x5x10; global average -> 10.

        Code: `jaxnotes.models.NiN`, `nin_block`; `jaxnotes.models.layers.GlobalAvgPool`;
        `jaxnotes.shapes.summarize`.
        """,
    ),
    SIZE_NOTE,
    code(SETUP),
    code(
        """
        import matplotlib.pyplot as plt
        import numpy as np

        from jaxnotes import plots, shapes
        from jaxnotes.models import get_model, nin_block
        """
    ),
    md("## One block, and the whole network"),
    code(
        """
        block = shapes.summarize(nin_block(96, 11, strides=4), (1, 224, 224, 1))
        print(block)
        nin_summary = shapes.summarize(get_model("nin"), (1, 224, 224, 1), train=False)
        print(nin_summary)
        """
    ),
    md("## Parameters: NiN against AlexNet"),
    code(
        """
        alexnet_summary = shapes.summarize(get_model("alexnet"), (1, 224, 224, 1), train=False)
        by_kind = {}
        for name, summary in (("NiN", nin_summary), ("AlexNet", alexnet_summary)):
            kinds = [(r.kind, r.params) for r in summary.rows]
            by_kind[name] = {k: sum(p for kind, p in kinds if kind == k) for k in ("Conv", "Dense")}
            print(
                f"{name:8} {summary.total_params:>11,} parameters: "
                f"conv {by_kind[name]['Conv']:,}, dense {by_kind[name]['Dense']:,}"
            )
        ratio = alexnet_summary.total_params / nin_summary.total_params
        print(f"AlexNet has {ratio:.0f}x the parameters of NiN")

        fig, ax = plt.subplots(figsize=(5, 2.6))
        left = np.zeros(2)
        for kind in ("Conv", "Dense"):
            values = np.array([by_kind[n][kind] for n in ("NiN", "AlexNet")])
            ax.barh(["NiN", "AlexNet"], values, left=left, label=kind)
            left += values
        ax.set_xlabel("parameters")
        ax.legend()
        ax.grid(True, axis="x", alpha=0.3)
        fig.tight_layout()
        """
    ),
    TRAIN_NOTE,
    code(
        """
        result, seconds = nbk.run_chapter_training("nin")
        plots.learning_curves(result.history, title="NiN");
        """
    ),
    code(
        """
        # Results
        trained_params = shapes.count_params(result.state.params)
        print(nbk.results_line("NiN", result, seconds, params=trained_params))
        print(
            f"NiN {nin_summary.total_params:,} vs AlexNet {alexnet_summary.total_params:,} "
            f"parameters at 224x224x1 ({ratio:.0f}x)"
        )
        print(f"notebook time: {time.perf_counter() - START:.1f} s")
        """
    ),
]

# --------------------------------------------------------------------------------------------
# 10 GoogLeNet

GOOGLENET = [
    header(
        "10_googlenet",
        "10. GoogLeNet: Inception blocks",
        r"""
        An **Inception block** runs four paths side by side on the same input and concatenates
        their outputs on the channel axis:

        1. a 1x1 convolution ($c_1$ channels);
        2. a 1x1 convolution ($c_2[0]$) then a 3x3 convolution with padding 1 ($c_2[1]$);
        3. a 1x1 convolution ($c_3[0]$) then a 5x5 convolution with padding 2 ($c_3[1]$);
        4. a 3x3 max pool with stride 1 and padding 1, then a 1x1 convolution ($c_4$).

        Every path keeps the height and width (padding $(k-1)/2$, stride 1), so the outputs can
        be concatenated: $c_1 + c_2[1] + c_3[1] + c_4$ channels. The 1x1 convolutions in front of
        the 3x3 and 5x5 ones cut their input channels, and so their cost. GoogLeNet stacks nine
        blocks in five stages (b1 ... b5) and ends with global average pooling; the auxiliary
        classifiers of the paper (after 4a and 4d, weight 0.3, training only) are
        `get_model("googlenet", aux_logits=True)`.

        Code: `jaxnotes.models.Inception`, `GoogLeNet`; `jaxnotes.models.googlenet.STAGES` (the
        nine blocks' channels); `jaxnotes.shapes.summarize`.
        """,
    ),
    SIZE_NOTE,
    code(SETUP),
    code(
        """
        import matplotlib.pyplot as plt
        import numpy as np

        from jaxnotes import plots, shapes
        from jaxnotes.models import Inception, get_model
        from jaxnotes.models.googlenet import STAGES
        """
    ),
    md(
        """
        ## One Inception block: the four branches' shapes

        Block 3a, `Inception(64, (96, 128), (16, 32), 32)`, on its 28x28x192 input (the paper's
        224 input): 64 + 128 + 32 + 32 = 256 channels out, 28x28 kept.
        """
    ),
    code(
        """
        block = Inception(64, (96, 128), (16, 32), 32)
        block_summary = shapes.summarize(block, (1, 28, 28, 192))
        print(block_summary)
        assert block_summary.output_shape == (1, 28, 28, 256)
        """
    ),
    md(
        """
        The nine blocks' output channels per branch (the bars' total is the block's output):
        GoogLeNet gives most channels to the 3x3 path.
        """
    ),
    code(
        """
        blocks = [(name, channels) for stage in STAGES for name, channels in stage]
        branch_names = ["1x1", "1x1 -> 3x3", "1x1 -> 5x5", "pool -> 1x1"]
        widths = np.array([[c1, c2[1], c3[1], c4] for _, (c1, c2, c3, c4) in blocks])
        fig, ax = plt.subplots(figsize=(7, 3.2))
        bottom = np.zeros(len(blocks))
        for j, branch in enumerate(branch_names):
            ax.bar([name for name, _ in blocks], widths[:, j], bottom=bottom, label=branch)
            bottom += widths[:, j]
        ax.set_xlabel("Inception block")
        ax.set_ylabel("output channels")
        ax.legend(fontsize=8)
        fig.tight_layout()
        for (name, _), row in zip(blocks, widths, strict=True):
            print(f"{name}: {' + '.join(map(str, row))} = {row.sum()} channels")
        """
    ),
    md("## The whole network at the book's 96x96x1"),
    code(
        """
        googlenet_summary = shapes.summarize(get_model("googlenet"), (1, 96, 96, 1), train=False)
        print(googlenet_summary)
        aux = get_model("googlenet", aux_logits=True)
        aux_params = shapes.summarize(aux, (1, 96, 96, 1), train=False).total_params
        print(f"with the two auxiliary classifiers: {aux_params:,} parameters")
        """
    ),
    TRAIN_NOTE,
    md(
        """
        At the small size GoogLeNet trains for a handful of steps only (compiling its 60-odd
        convolutions, forward and backward, dominates on a CPU): the run checks the whole
        training path, not the accuracy. The book size trains 10 epochs at 96x96.
        """
    ),
    code(
        """
        result, seconds = nbk.run_chapter_training("googlenet")
        plots.learning_curves(result.history, title="GoogLeNet");
        """
    ),
    code(
        """
        # Results
        trained_params = shapes.count_params(result.state.params)
        print(nbk.results_line("GoogLeNet", result, seconds, params=trained_params))
        print(
            f"Inception 3a: {block_summary.input_shape} -> {block_summary.output_shape}, "
            f"{block_summary.total_params:,} parameters"
        )
        print(
            f"GoogLeNet at 96x96x1: {googlenet_summary.total_params:,} parameters, "
            f"{googlenet_summary.total_macs / 1e9:.2f} G mult-adds per image"
        )
        print(f"notebook time: {time.perf_counter() - START:.1f} s")
        """
    ),
]

# --------------------------------------------------------------------------------------------


NOTEBOOKS: dict[str, list[tuple[str, str]]] = {
    "01_model_selection": MODEL_SELECTION,
    "02_weight_decay": WEIGHT_DECAY,
    "03_dropout": DROPOUT,
    "04_convolution": CONVOLUTION,
    "05_channels": CHANNELS,
    "06_pooling": POOLING,
    "07_lenet": LENET,
    "08_vgg": VGG,
    "09_nin": NIN,
    "10_googlenet": GOOGLENET,
}
# Notebooks whose book-size run wants an accelerator: Colab opens them on a GPU runtime.
GPU = {"07_lenet", "08_vgg", "09_nin", "10_googlenet"}


def build(name: str) -> str:
    """The notebook ``name`` as the exact text written to ``colab/<name>.ipynb``."""
    cells = []
    for index, (kind, source) in enumerate(NOTEBOOKS[name]):
        make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        cells.append(make(source, id=f"cell-{index:02d}"))
    metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "colab": {"provenance": [], "toc_visible": True},
    }
    if name in GPU:
        metadata["accelerator"] = "GPU"
        metadata["colab"]["gpuType"] = "T4"
    notebook = nbformat.v4.new_notebook(cells=cells, metadata=metadata)
    nbformat.validate(notebook)
    return nbformat.writes(notebook) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    args = parser.parse_args(argv)
    stale = []
    for name in NOTEBOOKS:
        path = HERE / f"{name}.ipynb"
        text = build(name)
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path.name)
        if not args.check:
            path.write_text(text)
    if stale:
        print(("differ: " if args.check else "written: ") + ", ".join(stale))
    return 1 if (args.check and stale) else 0


if __name__ == "__main__":
    sys.exit(main())
