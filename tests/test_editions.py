"""Both editions' settings, against the book's own training cells (d2l-en, quoted in the test).

classic: the d2l-en "classic" branch (PyTorch 0.17, the notes' course); d2l1: d2l-en master
23d7a5a (the current d2l.ai, whose JAX tab shares these cells). Values typed in from the book.
"""

import pytest

from jaxnotes import cli, presets

# model: (lr, batch, epochs, resize) as the book's cells set them
BOOK_CELLS = {
    "classic": {
        "lenet": (0.9, 256, 10, 28),  # lr, num_epochs = 0.9, 10; batch_size = 256
        "alexnet": (0.01, 128, 10, 224),
        "vgg11_small": (0.05, 128, 10, 224),  # ratio = 4; lr 0.05
        "nin": (0.1, 128, 10, 224),
        "googlenet": (0.1, 128, 10, 96),
        "mlp": (0.5, 256, 10, None),  # dropout1, dropout2 = 0.2, 0.5
    },
    "d2l1": {
        "lenet": (0.1, 128, 10, 28),  # LeNet(lr=0.1); FashionMNIST(batch_size=128)
        "alexnet": (0.01, 128, 10, 224),  # AlexNet(lr=0.01); resize=(224, 224)
        "vgg11_small": (0.01, 128, 10, 224),  # VGG(arch=((1, 16), ...), lr=0.01)
        "nin": (0.05, 128, 10, 224),  # NiN(lr=0.05)
        "googlenet": (0.01, 128, 10, 96),  # GoogleNet(lr=0.01); resize=(96, 96)
        "mlp": (0.1, 256, 10, None),  # dropout_1 0.5, dropout_2 0.5, lr 0.1
    },
}


@pytest.mark.parametrize("edition", ["classic", "d2l1"])
@pytest.mark.parametrize("model", ["lenet", "alexnet", "vgg11_small", "nin", "googlenet", "mlp"])
def test_each_edition_trains_with_the_books_settings(edition, model):
    args = cli.parse_args(["--model", model, "--dataset", "fashion_mnist", "--edition", edition])
    config = cli.build_config(args)
    lr, batch, epochs, resize = BOOK_CELLS[edition][model]
    assert (config.learning_rate, config.batch_size, config.epochs, config.resize) == (
        lr, batch, epochs, resize,
    )  # fmt: skip
    assert presets.source(model, edition)  # every entry names where it comes from


def test_the_dropout_rates_follow_the_edition():
    rates = {
        edition: cli.build_config(
            cli.parse_args(["--model", "mlp", "--dataset", "fashion_mnist", "--edition", edition])
        ).model_kwargs.get("dropout", (0.2, 0.5))
        for edition in ("classic", "d2l1")
    }
    assert rates == {"classic": (0.2, 0.5), "d2l1": (0.5, 0.5)}


def test_the_default_edition_is_classic_and_digits_keeps_its_presets():
    assert cli.build_config(cli.parse_args(["--dataset", "fashion_mnist"])).learning_rate == 0.9
    digits = [cli.build_config(cli.parse_args(["--edition", e])) for e in ("classic", "d2l1")]
    assert digits[0] == digits[1]
    with pytest.raises(SystemExit):
        cli.parse_args(["--edition", "third"])
