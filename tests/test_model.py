"""The recommender network: incremental equals batch, padding never leaks, per-example losses."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedrec.shared.data.dataset import Interactions, UserTexts
from fedrec.shared.model.events import build_sequences
from fedrec.shared.model.network import (
    ITEM_EVENT,
    TEXT_EVENT,
    ModelConfig,
    Recommender,
    initial_network,
    split_state,
    trained_names,
)
from fedrec.shared.model.training import (
    Features,
    NetworkRecommender,
    TrainConfig,
    train_central,
)

SMALL = ModelConfig(feature_dim=12, item_dim=12, hidden_dim=8, pool_window=3, start_events=2)


def trained_like(config: ModelConfig = SMALL) -> Recommender:
    """A network whose every path is active: the LSTM projection and the recency weights are
    random (an untrained one starts with the projection at zero)."""
    torch.manual_seed(0)
    model = Recommender(config).eval()
    with torch.no_grad():
        model.users.project.weight.normal_()
        model.users.project.bias.normal_()
        model.users.recency.weight.normal_()
    return model


def test_incremental_steps_equal_the_whole_sequence() -> None:
    model = trained_like()
    features = torch.randn(1, 7, 12)
    types = torch.tensor([[0, 1, 0, 0, 1, 0, 0]])
    with torch.no_grad():
        batch = model.users(features, types)[0]
        state = model.users.start()
        for t in range(7):
            state = model.users.step(state, features[:, t], types[:, t])
            torch.testing.assert_close(model.users.interest(state)[0], batch[t])


def test_pooling_weights_the_latest_window_of_events_and_averages_its_hidden_states() -> None:
    model = trained_like()
    features, types = torch.randn(1, 7, 12), torch.zeros(1, 7, dtype=torch.long)
    weights = model.users.recency.weight[0]  # oldest first
    with torch.no_grad():
        hidden, _ = model.users.lstm(model.users._inputs(features, types))
        expected = []
        for t in range(7):
            mean_hidden = hidden[0, max(0, t - 2) : t + 1].mean(dim=0)
            residual = sum(weights[2 - k] * features[0, t - k] for k in range(min(3, t + 1)))
            expected.append(F.normalize(residual + model.users.project(mean_hidden), dim=-1))
        torch.testing.assert_close(model.users(features, types)[0], torch.stack(expected))


def test_untrained_interest_is_the_mean_of_the_latest_event_vectors() -> None:
    model = Recommender(SMALL).eval()
    vectors, types = torch.randn(2, 6, 12), torch.randint(0, 2, (2, 6))
    lengths = torch.tensor([6, 1])
    with torch.no_grad():
        final = model.users.final(vectors, types, lengths)
    expected = torch.stack([vectors[0, 4:6].mean(dim=0), vectors[1, 0]])
    torch.testing.assert_close(final, F.normalize(expected, dim=-1))


def test_padding_does_not_change_earlier_positions() -> None:
    model = trained_like()
    features, types = torch.randn(1, 5, 12), torch.zeros(1, 5, dtype=torch.long)
    padded = torch.cat([features, torch.zeros(1, 3, 12)], dim=1)
    padded_types = torch.cat([types, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(
            model.users(padded, padded_types)[:, :5], model.users(features, types)
        )


def test_final_equals_the_last_position_of_each_row() -> None:
    model = trained_like()
    vectors, types = torch.randn(3, 6, 12), torch.randint(0, 2, (3, 6))
    lengths = torch.tensor([6, 2, 4])
    with torch.no_grad():
        every = model.users(vectors, types)
        final = model.users.final(vectors, types, lengths)
    torch.testing.assert_close(final, every[torch.arange(3), lengths - 1])


def test_interest_needs_an_event() -> None:
    model = Recommender(SMALL)
    with pytest.raises(ValueError, match="needs at least one event"):
        model.users.interest(model.users.start())


@pytest.mark.parametrize("rank", [0, 3])
def test_untrained_item_tower_is_the_normalised_encoder(rank: int) -> None:
    model = Recommender(ModelConfig(feature_dim=12, item_dim=12, hidden_dim=8, item_rank=rank))
    features = torch.randn(4, 12)
    torch.testing.assert_close(model.items(features), F.normalize(features, dim=-1))
    size = sum(p.numel() for p in model.items.parameters())
    assert size == (2 * 3 * 12 + 12 if rank else 12 * 12 + 12), f"item tower has {size} params"


@pytest.mark.parametrize("rank", [0, 3])
def test_a_centred_item_tower_starts_as_the_encoder_centred_on_the_catalog(rank: int) -> None:
    config = ModelConfig(feature_dim=12, item_dim=12, hidden_dim=8, item_rank=rank)
    centred = dataclasses.replace(config, center_features=True)
    catalog = F.normalize(torch.randn(50, 12) + 2.0, dim=-1)  # one shared direction
    model = initial_network(centred, seed=0, catalog=catalog)
    features = torch.randn(4, 12)
    expected = F.normalize(features - catalog.double().mean(dim=0).float(), dim=-1)
    with torch.no_grad():
        torch.testing.assert_close(model.items(features), expected)
        items = model.items(catalog)
    assert float(items.mean(dim=0).norm()) < 0.5 * float(catalog.mean(dim=0).norm())
    # a frozen buffer: never trained, always in the state a device is sent
    assert "items.center" in model.state_dict()
    assert "items.center" not in trained_names(model, "all")
    assert "items.center" not in Recommender(config).state_dict()


def test_a_centred_item_tower_refuses_to_run_uncentred_or_on_a_bad_catalog() -> None:
    centred = ModelConfig(feature_dim=12, item_dim=12, hidden_dim=8, center_features=True)
    with pytest.raises(ValueError, match="needs the catalog's features"):
        initial_network(centred, seed=0)
    with pytest.raises(RuntimeError, match="never set"):
        Recommender(centred).items(torch.randn(2, 12))
    # the centre travels in the state dict: loading a set one sets it, an unset one unsets it
    catalog = torch.randn(5, 12)
    model, unset = initial_network(centred, seed=0, catalog=catalog), Recommender(centred)
    unset.load_state_dict(model.state_dict())
    torch.testing.assert_close(unset.items(catalog), model.items(catalog))
    model.load_state_dict(Recommender(centred).state_dict())
    with pytest.raises(RuntimeError, match="never set"):
        model.items(catalog)
    for catalog, problem in (
        (torch.randn(5, 11), r"must be \(items, 12\)"),
        (torch.randn(0, 12), r"must be \(items, 12\)"),
        (torch.full((5, 12), math.nan), "not finite"),
    ):
        with pytest.raises(ValueError, match=problem):
            initial_network(centred, seed=0, catalog=catalog)
    with pytest.raises(ValueError, match="does not centre"):
        Recommender(SMALL).items.center_on(torch.randn(5, SMALL.feature_dim))


def test_low_rank_item_tower_learns_a_rank_r_change() -> None:
    torch.manual_seed(0)
    model = Recommender(ModelConfig(feature_dim=12, item_dim=12, hidden_dim=8, item_rank=3))
    with torch.no_grad():
        model.items.expand.weight.normal_()  # type: ignore[union-attr]
    change = model.items.expand(model.items.project(torch.eye(12)))  # type: ignore[misc]
    bias = model.items.expand.bias  # type: ignore[union-attr]
    assert int(torch.linalg.matrix_rank(change - bias)) == 3


def test_scores_are_cosines_over_temperature() -> None:
    model = Recommender(SMALL)
    users, items = F.normalize(torch.randn(2, 12), dim=-1), F.normalize(torch.randn(5, 12), dim=-1)
    torch.testing.assert_close(model.logits(users, items), (users @ items.T) / 0.05)
    assert model.logits(users, items).abs().max() <= 1 / 0.05 + 1e-4


def per_example_grads(
    model: Recommender, features: torch.Tensor, targets: torch.Tensor
) -> dict[str, torch.Tensor]:
    types = torch.zeros(features.shape[:2], dtype=torch.long)
    items = torch.randn(6, 12, generator=torch.Generator().manual_seed(1))
    model.zero_grad()
    logits = model.logits(model.users(features, types)[:, -1], model.items(items))
    F.cross_entropy(logits, targets, reduction="none")[0].backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_an_examples_gradient_does_not_depend_on_its_batch() -> None:
    torch.manual_seed(0)
    model = Recommender(SMALL)
    mine = torch.randn(1, 4, 12)
    with_a = per_example_grads(
        model, torch.cat([mine, torch.randn(3, 4, 12)]), torch.tensor([1, 2, 3, 4])
    )
    with_b = per_example_grads(
        model, torch.cat([mine, torch.randn(2, 4, 12)]), torch.tensor([1, 5, 0])
    )
    assert with_a.keys() == with_b.keys() == {n for n, _ in model.named_parameters()}
    for name in with_a:
        torch.testing.assert_close(with_a[name], with_b[name], msg=name)


def test_a_users_scores_do_not_depend_on_the_users_batched_with_them() -> None:
    """The harness scorer batches users of like history lengths together, out of the order it
    is asked in; every row is still the scores of the user asked for, as scored alone."""
    rng = np.random.default_rng(0)
    num_users, num_items = 70, 9  # more users than one batch, histories of 1 to 59 events
    lengths = rng.integers(1, 60, num_users)
    users = np.repeat(np.arange(num_users), lengths)
    times = np.concatenate([np.arange(k) for k in lengths])
    events = Interactions(
        users, rng.integers(0, num_items, len(users)), times, np.full(len(users), np.nan)
    )
    seq = build_sequences(num_users, num_items, events, UserTexts.empty())
    features = Features(F.normalize(torch.randn(num_items, 12), dim=-1), num_items)
    scorer = NetworkRecommender(trained_like())
    split: Any = SimpleNamespace(users=rng.permutation(num_users), num_items=num_items)
    scorer.use(split, seq, features)
    positions = rng.permutation(num_users)
    scores = scorer.score(positions)
    assert scores.shape == (num_users, num_items)
    for row, position in zip(scores, positions, strict=True):
        alone = scorer.score(np.array([position]))[0]
        np.testing.assert_allclose(row, alone, rtol=1e-5, atol=1e-6)
    assert not np.allclose(scores[0], scores[1])  # the users' scores differ


def test_sequences_merge_items_and_texts_in_time_order() -> None:
    rows = Interactions(
        users=np.array([0, 0, 1, 0], dtype=np.int64),
        items=np.array([2, 0, 1, 1], dtype=np.int64),
        timestamps=np.array([30, 10, 5, 20], dtype=np.int64),
        values=np.full(4, np.nan),
    )
    texts = UserTexts(
        users=np.array([0, 1], dtype=np.int64),
        timestamps=np.array([20, 1], dtype=np.int64),
        texts=["review", "query"],
        items=np.array([1, -1], dtype=np.int64),
    )
    seq = build_sequences(num_users=3, num_items=3, interactions=rows, texts=texts)
    assert seq.ptr.tolist() == [0, 4, 6, 6]
    user0 = seq.user(0)
    assert seq.types[user0].tolist() == [ITEM_EVENT, ITEM_EVENT, TEXT_EVENT, ITEM_EVENT]
    assert seq.rows[user0].tolist() == [0, 1, 3, 2]  # text 0 is feature row 3 + 0
    assert seq.next_items[user0].tolist() == [1, 2, 2, -1]
    assert seq.rows[seq.user(1)].tolist() == [4, 1]
    assert seq.next_items[seq.user(1)].tolist() == [1, -1]


@pytest.mark.parametrize("center", [False, True])
def test_central_training_learns_a_planted_pattern(center: bool) -> None:
    # Item i is always followed by item (i + 1) % 6; features are random but fixed.
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(20), 8)
    items = (rng.integers(0, 6, size=20)[:, None] + np.arange(8)).ravel() % 6
    rows = Interactions(users, items, np.tile(np.arange(8), 20), np.full(160, np.nan))
    seq = build_sequences(20, 6, rows, UserTexts.empty())
    torch.manual_seed(0)
    features = Features(F.normalize(torch.randn(6, 12), dim=-1), num_items=6)
    config = dataclasses.replace(SMALL, center_features=center)
    model = initial_network(config, seed=0, catalog=features.items)
    log = train_central(
        model, seq, features, TrainConfig(epochs=30, batch_users=5, learning_rate=1e-2)
    )
    assert log.losses[-1] < 0.5 * log.losses[0]
    with torch.no_grad():
        vectors = model.items(features.table)
        interests = model.users(vectors[torch.tensor([[0, 1, 2]])], torch.zeros(1, 3).long())
        scores = model.logits(interests[0, -1], vectors)
    scores[:3] = -torch.inf  # the history's own items are excluded when ranking
    assert int(scores.argmax()) == 3


def test_central_training_moves_only_the_trained_parts() -> None:
    rng = np.random.default_rng(0)
    rows = Interactions(
        np.repeat(np.arange(4), 5), rng.integers(0, 6, 20), np.tile(np.arange(5), 4), np.ones(20)
    )
    seq = build_sequences(4, 6, rows, UserTexts.empty())
    features = Features(F.normalize(torch.randn(6, 12), dim=-1), num_items=6)
    model = Recommender(SMALL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_central(model, seq, features, TrainConfig(epochs=2, trained="users.recency"))
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed == ["users.recency.weight"]


def test_train_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="batch_users must be at least 1, got 0"):
        TrainConfig(batch_users=0)
    with pytest.raises(ValueError, match="temperature must be in"):
        ModelConfig(temperature=0)
    with pytest.raises(ValueError, match=r"start_events \(6\) cannot exceed pool_window \(5\)"):
        ModelConfig(pool_window=5, start_events=6)
    with pytest.raises(ValueError, match="needs feature_dim == item_dim"):
        ModelConfig(feature_dim=12, item_dim=8, item_rank=2)


def test_trained_names_select_whole_modules_and_refuse_unknown_paths() -> None:
    network = Recommender(SMALL)
    everything = [name for name, _ in network.named_parameters()]
    assert trained_names(network, "all") == everything
    assert trained_names(network, "items, users.recency") == [
        "items.project.weight",
        "items.project.bias",
        "users.recency.weight",
    ]
    assert trained_names(network, "users") == [n for n in everything if n.startswith("users.")]
    with pytest.raises(ValueError, match=r"\['users.lst'\] name no module"):
        trained_names(network, "items,users.lst")  # a prefix of a path is not a path
    trained, frozen = split_state(network, "items")
    assert list(trained) == ["items.project.weight", "items.project.bias"]
    assert list(frozen) == [n for n in everything if not n.startswith("items.")]
    state = network.state_dict()
    assert all(torch.equal(state[n], v) for n, v in {**trained, **frozen}.items())
