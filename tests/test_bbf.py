"""BBF (agents.bbf): its annealing, n-step targets, resets with shrink-and-perturb, EMA target,
AdamW, SPR as BBF computes it, checkpoints, and its gin file read as BBF's published config."""

from __future__ import annotations

import copy
import functools
import math
from pathlib import Path

import gin
import pytest
import torch
import torch.nn.functional as F
from conftest import mlflow_runs, run_cli
from torch import nn

from mlr_registry import config, registry
from mlr_registry.agents.annealing import Annealing, exponential_schedule
from mlr_registry.agents.bbf import BBF
from mlr_registry.agents.distributional import project_distribution
from mlr_registry.agents.n_step import n_step_returns
from mlr_registry.agents.resets import ResetSchedule, fresh_copy, shrink_perturb_
from mlr_registry.batch import Batch
from mlr_registry.encoders.impala_cnn import ImpalaCNN
from mlr_registry.errors import ConfigError
from mlr_registry.losses.spr import SPRLoss
from mlr_registry.tracking import naming
from mlr_registry.training.experiment import experiment  # noqa: F401 - registers `experiment`

REPO = Path(__file__).resolve().parent.parent

A = 3
TINY_IMPALA = functools.partial(ImpalaCNN, channels=(2, 4, 4), width_scale=1, image_size=84)  # 4x11x11


def tiny_bbf(losses=(), **kwargs) -> BBF:
    torch.manual_seed(0)
    params = {"encoder": TINY_IMPALA, "hidden_size": 16, "aux_losses": losses, "augment": False, **kwargs}
    return BBF((4, 84, 84), A, **params)


def bbf_spr(**kwargs) -> SPRLoss:
    return SPRLoss(**{"target": "agent", "share_latent": True, "norm": "none", "init": "xavier",
                      "renormalize_eps": 1e-5, "normalize_eps": 1e-12, **kwargs})


def make_batch(b: int = 4, t: int = 11, seed: int = 0, weights=None, done=None) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch(obs=torch.randint(0, 256, (b, t, 4, 84, 84), dtype=torch.uint8, generator=g),
                 action=torch.randint(0, A, (b, t), generator=g), reward=torch.randn(b, t, generator=g).sign(),
                 done=torch.zeros(b, t, dtype=torch.bool) if done is None else done, weights=weights)


# --- annealing -------------------------------------------------------------------------------

def test_annealing_runs_bbfs_schedules_from_10_to_3_and_097_to_0997():
    a = Annealing()
    assert (a.horizon(0), a.horizon(10_000), a.horizon(50_000)) == (10, 3, 3)
    assert math.isclose(a.gamma(0), 0.97) and math.isclose(a.gamma(10_000), 0.997)
    # geometric: halfway, n = round(10 * 0.3**0.5) = 5 and 1 - gamma = 0.03 * 0.1**0.5
    assert a.horizon(5_000) == 5
    assert math.isclose(a.gamma(5_000), 1 - 0.03 * 0.1 ** 0.5, rel_tol=1e-12)
    horizons = [a.horizon(s) for s in range(0, 10_001, 100)]
    assert horizons == sorted(horizons, reverse=True) and set(horizons) == set(range(3, 11))
    assert Annealing(period=0).horizon(0) == 3 and Annealing(period=0).gamma(0) == 0.997
    assert exponential_schedule(3, 0, 1.0, 0.5) == 0.5


def test_annealing_refuses_a_horizon_that_would_grow():
    with pytest.raises(ConfigError, match="max_update_horizon = 2 is below bbf.update_horizon = 3"):
        Annealing(max_update_horizon=2, update_horizon=3)


# --- n-step targets --------------------------------------------------------------------------

def test_n_step_returns_cut_at_the_first_done_and_bbfs_bootstrap_is_one_step_early():
    reward = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 4.0, 8.0]])
    done = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], dtype=torch.bool)
    g = 0.5
    returns, terminal, step = n_step_returns(reward, done, 3, g, bootstrap_one_step_early=True)
    assert step == 2
    assert torch.allclose(returns, torch.tensor([1 + g + g * g, 1 + g, 1 + 2 * g + 4 * g * g]))
    # BBF misses the done on the 3rd transition (row 2) and bootstraps from obs 2
    assert terminal.tolist() == [False, True, False]
    returns_clean, terminal_clean, step_clean = n_step_returns(reward, done, 3, g, bootstrap_one_step_early=False)
    assert step_clean == 3 and torch.equal(returns_clean, returns)
    assert terminal_clean.tolist() == [False, True, True]


# --- resets ----------------------------------------------------------------------------------

def test_reset_schedule_resets_at_20k_40k_60k_80k_env_steps_only():
    schedule = ResetSchedule(every=20_000, until=100_000)
    assert [k for k in range(1, 100_001) if schedule.due(k)] == [20_000, 40_000, 60_000, 80_000]
    assert not any(ResetSchedule(every=0).due(k) for k in range(1, 1000))


def test_shrink_perturb_mixes_the_old_weights_with_a_fresh_draw_of_the_modules_own_init():
    torch.manual_seed(1)
    module = nn.Sequential(TINY_IMPALA(in_channels=4))
    old = [p.detach().clone() for p in module.parameters()]
    torch.manual_seed(7)
    expected_fresh = [p.detach().clone() for p in fresh_copy(module).parameters()]
    torch.manual_seed(7)
    shrink_perturb_(module, 0.5, 0.5)
    for p, o, f in zip(module.parameters(), old, expected_fresh, strict=True):
        assert torch.allclose(p, 0.5 * o + 0.5 * f)
    # the fresh draw is the Impala's Xavier init: conv biases zero, so they only shrink
    bias = module[0].stages[0].conv.bias
    assert torch.allclose(bias, 0.5 * old[1])


def test_agent_reset_shrinks_the_encoder_redraws_the_head_and_targets_and_clears_adamw():
    agent = tiny_bbf([bbf_spr()], shrink_perturb=("encoder", "aux_losses.0.transition_model"),
                     reset_every=5, no_resets_after=100)
    assert set(agent.parts()) == {"encoder", "head", "aux_losses.0.transition_model", "aux_losses.0.predictor"}
    for s in range(3):
        agent.update(make_batch(seed=s))
    before = copy.deepcopy(agent.state_dict())
    assert agent.optimizer.state and agent.cycle_updates == 3
    agent.set_step(3)  # 4 transitions stored: not yet
    assert agent.cycle_updates == 3
    agent.set_step(4)  # the 5th transition: reset
    after = agent.state_dict()
    assert not agent.optimizer.state and agent.cycle_updates == 0 and agent.resets.resets == 1
    w = "encoder.stages.0.conv.weight"
    assert not torch.equal(after[w], before[w])
    # shrink 0.5: the fresh part is after - 0.5 * before, a Xavier draw within its bound
    fresh = after[w] - 0.5 * before[w]
    fan_in, fan_out = 4 * 9, 2 * 9
    assert fresh.abs().max() <= 0.5 * math.sqrt(6 / (fan_in + fan_out)) + 1e-6
    # the head is a whole new draw (its zero biases too), the target head another one
    assert torch.count_nonzero(after["head.projection.bias"]) == 0
    assert not torch.equal(after["head.projection.weight"], after["target_head.projection.weight"])
    assert not torch.equal(after["target_encoder.stages.0.conv.weight"], before["target_encoder.stages.0.conv.weight"])
    assert not torch.equal(after["aux_losses.0.predictor.weight"], before["aux_losses.0.predictor.weight"])
    assert agent.resets.next_reset == 10


def test_shrink_perturb_names_must_be_parts():
    with pytest.raises(ConfigError, match=r"bbf.shrink_perturb names \['aux_losses.0.transition'\].*parts are"):
        tiny_bbf([bbf_spr()], shrink_perturb=("encoder", "aux_losses.0.transition"))


# --- one update ------------------------------------------------------------------------------

def test_update_is_c51_with_double_dqn_on_the_annealed_horizon_and_an_ema_target():
    agent = tiny_bbf(max_update_horizon=4, update_horizon=2, min_discount=0.9, discount=0.99, anneal_period=10)
    batch = make_batch(weights=torch.tensor([1.0, 0.5, 0.25, 1.0]))
    online = copy.deepcopy(agent)
    n, gamma = 4, 0.9  # the first update of a cycle: the annealing's start
    # the expected loss, recomputed from the networks before the step
    with torch.no_grad():
        returns, terminal, step = n_step_returns(batch.reward, batch.done, n, gamma, True)
        nxt = batch.obs[:, step].float() / 255
        tp = F.softmax(online.target_head(online.target_encoder(nxt)), -1)
        a_star = (F.softmax(online.head(online.encoder(nxt)), -1) @ online.support).argmax(-1)
        target = project_distribution(tp[torch.arange(4), a_star], returns, terminal, gamma ** n, online.support)
        log_p = F.log_softmax(online.head(online.encoder(batch.obs[:, 0].float() / 255)), -1)
        ce = -(target * log_p[torch.arange(4), batch.action[:, 0]]).sum(-1)
    metrics = agent.update(batch)
    assert metrics["update_horizon"] == 4 and math.isclose(metrics["discount"], 0.9)
    assert math.isclose(metrics["rl_loss"], float((batch.weights * ce).mean()), rel_tol=1e-5)
    assert torch.allclose(metrics.priorities, ce + 1e-10, rtol=1e-5)
    # target <- (1 - tau) target + tau online_after
    for (name, t_after), t_before in zip(agent.target_head.named_parameters(), online.target_head.parameters(),
                                         strict=True):
        expected = 0.995 * t_before + 0.005 * dict(agent.head.named_parameters())[name]
        assert torch.allclose(t_after, expected, atol=1e-7), name


def test_adamw_decays_kernels_only():
    agent = tiny_bbf()
    decayed, plain = agent.optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.ndim != 1 for p in decayed["params"]) and all(p.ndim == 1 for p in plain["params"])
    assert agent.optimizer.defaults["eps"] == 1.5e-4 and agent.optimizer.defaults["lr"] == 1e-4
    assert len(decayed["params"]) + len(plain["params"]) == sum(1 for p in agent.parameters() if p.requires_grad)


def test_acting_uses_the_target_network_when_asked():
    agent = tiny_bbf()
    obs = torch.randint(0, 256, (6, 4, 84, 84), dtype=torch.uint8)
    slope = torch.arange(51, dtype=torch.float)

    def favour(action: int) -> torch.Tensor:  # (A*atoms) advantage biases: the mass at v_max for one action
        return torch.stack([slope if a == action else -slope for a in range(A)]).flatten()

    with torch.no_grad():
        for head, action in ((agent.head, A - 1), (agent.target_head, 0)):
            head.advantage.weight.zero_()
            head.advantage.bias.copy_(favour(action))
    assert agent.act(obs).tolist() == [0] * 6
    agent.target_action_selection = False
    assert agent.act(obs).tolist() == [A - 1] * 6


def test_spr_reads_the_agents_latent_and_target_network():
    loss = bbf_spr()
    agent = tiny_bbf([loss])
    assert not loss.target_networks() and not hasattr(loss, "target_encoder")
    assert isinstance(loss.predictor, nn.Linear) and torch.count_nonzero(loss.predictor.bias) == 0
    batch = make_batch()
    metrics = agent.update(batch)
    assert metrics["spr_loss"] > 0 and 0 < metrics["spr_kept_fraction"] <= 1
    with pytest.raises(ConfigError, match="share_latent = True, but the agent shares no latent"):
        loss(batch, agent.loss_context)


def test_spr_target_agent_needs_an_agent_that_keeps_one():
    from mlr_registry.agents.rainbow import Rainbow
    from mlr_registry.encoders.nature_cnn import NatureCNN
    from mlr_registry.losses.mlr import MLRLoss

    for name, loss in (("spr", SPRLoss(target="agent")), ("mlr", MLRLoss(target="agent"))):
        with pytest.raises(ConfigError, match=f"losses.{name}.target = 'agent' reads the agent's target encoder.*"
                                              f"use losses.{name}.target = 'own'"):
            Rainbow((4, 84, 84), A, encoder=functools.partial(NatureCNN, channels=(4, 8, 8)), hidden_size=16,
                    aux_losses=[loss])


def test_checkpoint_round_trip_keeps_the_cycle_and_the_reset_schedule():
    agent = tiny_bbf(reset_every=7)
    agent.update(make_batch())
    agent.set_step(6)
    state = copy.deepcopy(agent.checkpoint_state())
    other = tiny_bbf(reset_every=7)
    other.load_checkpoint_state(state)
    assert (other.cycle_updates, other.update_count, other.resets.next_reset, other.resets.resets) == (0, 1, 14, 1)
    for a, b in zip(agent.state_dict().values(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_update_needs_sequences_beyond_the_longest_horizon():
    with pytest.raises(ConfigError, match="more than max_update_horizon = 10 steps"):
        tiny_bbf().update(make_batch(t=10))


# --- the config ------------------------------------------------------------------------------

# configs/BBF.gin of google-research/bigger_better_faster (commit 35c7461), line: value.
BBF_GIN = [
    ("agents.bbf.discount", 0.997),                  # :9  JaxDQNAgent.gamma
    ("trainers.atari100k.learning_starts", 2000),    # :10 min_replay_history
    ("trainers.atari100k.epsilon_final", 0.0),       # :13 epsilon_train
    ("trainers.atari100k.eval_epsilon", 0.001),      # :14 epsilon_eval
    ("trainers.atari100k.epsilon_decay_steps", 2001),  # :15
    ("agents.bbf.dueling", True), ("agents.bbf.double_dqn", True), ("agents.bbf.n_atoms", 51),  # :19-22
    ("agents.bbf.update_horizon", 3), ("agents.bbf.max_update_horizon", 10),  # :23-24
    ("agents.bbf.min_discount", 0.97), ("agents.bbf.anneal_period", 10_000),  # :25-26
    ("agents.bbf.reset_every", 20_000),              # :27
    ("agents.bbf.shrink_perturb", ("encoder", "aux_losses.0.transition_model")),  # :28
    ("agents.bbf.shrink_factor", 0.5), ("agents.bbf.perturb_factor", 0.5),  # :29-30
    ("agents.bbf.no_resets_after", 100_000),         # :31
    ("trainers.atari100k.updates_per_step", 2),      # :33 replay_ratio 64 / :35 batch 32
    ("trainers.atari100k.batch_size", 32),           # :35
    ("losses.spr.weight", 1.0),                      # :36 spr_weight 5 on the mean of 5 jumps
    ("losses.spr.jumps", 5),                         # :37
    ("agents.bbf.augment", True),                    # :38
    ("agents.bbf.learning_rate", 1e-4),              # :43-44
    ("agents.bbf.target_tau", 0.005), ("agents.bbf.target_action_selection", True),  # :46-47
    ("encoders.impala_cnn.renormalize", True), ("agents.bbf.hidden_size", 2048),  # :49-50
    ("encoders.impala_cnn.width_scale", 4), ("encoders.impala_cnn.num_blocks", 2),  # :52-53
    ("agents.bbf.adam_eps", 1.5e-4), ("agents.bbf.weight_decay", 0.1),  # :56-57
    ("envs.atari.terminal_on_life_loss", True),      # :61
    ("trainers.atari100k.num_env_steps", 100_000),   # :63
    ("trainers.atari100k.eval_episodes", 100),       # :64
    ("envs.atari.noop_max", 30),                     # :67
    ("envs.atari.max_episode_steps", 27_000),        # :68
    ("replays.prioritized_sequence.alpha", 0.5),     # spr_agent.py: priority sqrt(loss + 1e-10)
    ("replays.prioritized_sequence.beta_start", 0.5), ("replays.prioritized_sequence.beta_end", 0.5),
    ("replays.prioritized_sequence.is_weight_eps", 1e-10),  # spr_agent.py: 1 / sqrt(p + 1e-10)
    ("replays.prioritized_sequence.insert_max_priority", True),  # spr_agent.py: _store_transition
]


@pytest.mark.parametrize("selector, value", BBF_GIN)
def test_atari_bbf_reads_as_bbfs_published_config(selector, value):
    registry.load_all()
    try:
        config.parse([REPO / "gin/atari_bbf.gin"])
        got = config.query(selector)
    finally:
        gin.clear_config()
    assert (tuple(got) if isinstance(got, list) else got) == value


def test_runs_of_another_base_agent_are_named_after_it():
    tags = {"objective": "spr", "agent": "bbf", "benchmark": "atari100k", "env": "alien", "seed": "0"}
    assert naming.run_name(tags, ["gin/atari_bbf.gin"]) == "spr · bbf · alien · seed 0"
    assert naming.run_name({**tags, "agent": "rainbow"}, ["gin/atari_spr.gin"]) == "spr · alien · seed 0"


def test_mlr_on_bbf_trains_end_to_end_to_a_tracked_run_with_a_reset(tmp_path):
    db = tmp_path / "store.db"
    proc = run_cli(["--gin", str(REPO / "gin/smoke/atari_bbf_mlr.gin"), "--tracking-uri", f"sqlite:///{db}",
                    "--bind", "trainers.atari100k.num_env_steps = 160"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, runs = mlflow_runs(db, "smoke")
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "mlr · bbf smoke num_env_steps=160 · breakout · seed 0"
    assert {k: run.data.tags[k] for k in ("agent", "objective", "benchmark")} == \
        {"agent": "bbf", "objective": "mlr", "benchmark": "atari100k"}
    assert run.data.params["losses.mlr.target"] == "'agent'"
    resets = [m.value for m in client.get_metric_history(run.info.run_id, "train/resets")]
    horizons = [m.value for m in client.get_metric_history(run.info.run_id, "train/update_horizon")]
    assert resets[-1] == 1.0  # the reset at step 120 of 160
    assert 3 <= min(horizons) and max(horizons) <= 10
    assert {"train/mlr_loss", "train/rl_loss", "final_return", "eval/hns"} <= set(run.data.metrics)


def test_a_replay_too_short_for_the_horizon_stops_before_training():
    from mlr_registry.training.atari100k import check_returns_match

    class Replay:
        n_step = 5

    with pytest.raises(ConfigError, match="bootstraps up to 10 steps ahead but the replay's sequences carry "
                                          "n_step = 5.*N_STEP = 10"):
        check_returns_match(tiny_bbf(), Replay())


def test_bbfs_replay_inserts_at_the_largest_priority_and_weights_with_its_eps():
    from mlr_registry.replay.prioritized_sequence_replay import PrioritizedSequenceReplay

    replay = PrioritizedSequenceReplay(capacity=200, sequence_length=2, n_step=2, insert_max_priority=True,
                                       is_weight_eps=1e-10, beta_start=0.5, beta_end=0.5)
    obs = torch.zeros(4, 84, 84, dtype=torch.uint8)
    for _ in range(20):
        replay.add(obs, 0, 0.0, False)
    on = replay.priorities > 0
    assert torch.equal(replay.priorities[on], torch.ones(int(on.sum()), dtype=torch.float64))  # the max so far: 1
    replay.update_priorities(torch.tensor([on.nonzero()[0, 0]]), torch.tensor([16.0]))  # stored 16^0.5 = 4
    for _ in range(3):
        replay.add(obs, 0, 0.0, False)
    newest = replay.priorities.nonzero().max()
    assert replay.priorities[newest] == 4.0  # new entries join at the largest priority stored
    batch = replay.sample(64)
    p = replay.priorities[batch.indices]
    expected = (p + 1e-10) ** -0.5
    torch.testing.assert_close(batch.weights, (expected / expected.max()).float())
    state = replay.state_dict()
    other = PrioritizedSequenceReplay(capacity=200, sequence_length=2, n_step=2, insert_max_priority=True)
    other.load_state_dict(state)
    assert float(other._max_priority) == 4.0


def test_an_encoder_sized_for_other_frames_is_named():
    with pytest.raises(ConfigError, match=r"encoder ImpalaCNN maps an observation of shape \(4, 84, 84\) to \(484,\)"
                                          r".*declares output_dim 36.*check its image_size"):
        tiny_bbf(encoder=functools.partial(ImpalaCNN, channels=(2, 4, 4), width_scale=1, image_size=20))
