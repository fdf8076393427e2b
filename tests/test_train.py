"""The training loop and the training stage of the runner: determinism, completion-only loss, equal
examples per arm, saved weights that reload to the same logits, skipping finished arms, early
stopping, the learning-rate search and its cache, and resuming a killed run to the same result."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lorafair.models import sources as models

from lorafair.study import corpus as corpus_stage
from lorafair.study import train as train_stage
from lorafair.study.jobs import with_executor
from lorafair.study.session import Request, open_session
from lorafair.arms.bank import ArmBank, save_final, wrap_for_training
from lorafair.study.config import Arm, TrainingConfig, study_from_dict
from lorafair.errors import UserError
from lorafair.study.runner import Runner
from lorafair.store.rundir import RunDir, read_json, read_jsonl
from lorafair.training.encoding import collate, completion_loss, encode
from lorafair.training.loop import Diverged, train, validation_loss

from conftest import CORPUS, tiny_study_dict, write_corpus, write_yaml

REPO = Path(__file__).resolve().parents[1]
FULL = Arm("full", "full")
LORA = Arm("lora-r2", "lora", rank=2, alpha=4.0, target_modules=("q_proj", "v_proj", "down_proj"))
LORA_DROP = dataclasses.replace(LORA, dropout=0.1)


def fresh(arm: Arm, seed: int = 0):
    return wrap_for_training(models.load_model("tiny-random"), arm, seed)


def cfg(**kw) -> TrainingConfig:
    base = dict(max_steps=6, batch_size=4, max_length=32, eval_every=3, checkpoint_every=2, warmup_ratio=0.0)
    return TrainingConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def enc(tok):
    rows = encode(tok, CORPUS, 32)
    return rows[:18], rows[18:]


def logits(model, tok, texts=("The garden was", "A basket of apples and")) -> torch.Tensor:
    b = tok(list(texts), return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**b).logits.float()


# ---------------------------------------------------------------- data and loss


def test_encode_masks_the_prompt(tok):
    row = {"prompt": "Tell me about the park.", "completion": " It is green and quiet."}
    p = tok(row["prompt"])["input_ids"]
    c = tok(row["completion"], add_special_tokens=False)["input_ids"]
    (e,) = encode(tok, [row], 64)
    assert e["input_ids"] == p + c + [tok.eos_token_id]
    assert e["labels"] == [-100] * len(p) + c + [tok.eos_token_id]
    (short,) = encode(tok, [row], len(p) + 2)
    assert short["input_ids"] == (p + c)[: len(p) + 2] and short["labels"] == [-100] * len(p) + c[:2]


def test_completion_loss_is_mean_over_completion_tokens(tok, enc):
    model = models.load_model("tiny-random").eval()
    items = enc[0][:3]
    b = collate(items, tok.pad_token_id)
    assert b["input_ids"].shape[0] == 3 and (b["attention_mask"].sum(1) == torch.tensor([len(x["input_ids"]) for x in items])).all()
    got = completion_loss(model, b).item()
    terms = []
    for x in items:  # each example alone, unpadded; position t predicts token t + 1
        with torch.no_grad():
            lp = F.log_softmax(model(input_ids=torch.tensor([x["input_ids"]])).logits[0].double(), -1)
        for t in range(len(x["input_ids"]) - 1):
            if x["labels"][t + 1] != -100:
                terms.append(-lp[t, x["labels"][t + 1]].item())
    n_completion = sum(sum(1 for v in x["labels"] if v != -100) for x in items)
    assert len(terms) == n_completion
    assert got == pytest.approx(sum(terms) / len(terms), rel=1e-5)
    assert validation_loss(model, items, tok.pad_token_id, batch_size=2) == pytest.approx(got, rel=1e-5)


# ---------------------------------------------------------------- the loop


def test_same_seed_same_loss_curve(tok, enc):
    c = cfg(max_steps=4, eval_every=2)
    for arm in (FULL, LORA_DROP):
        a = train(fresh(arm), arm, *enc, c, 0, 1e-3, tok.pad_token_id)
        b = train(fresh(arm), arm, *enc, c, 0, 1e-3, tok.pad_token_id)
        assert [r["loss"] for r in a.log] == [r["loss"] for r in b.log]
        assert a.val_curve == b.val_curve
    other = train(fresh(LORA_DROP, seed=1), LORA_DROP, *enc, c, 1, 1e-3, tok.pad_token_id)
    assert [r["loss"] for r in a.log] != [r["loss"] for r in other.log]


def test_every_arm_sees_the_same_examples(tok, enc):
    assert len(enc[0]) == 18  # batches of 4 per epoch: 4, 4, 4, 4, 2
    for accum, seen in ((1, 18), (2, 36)):
        c = cfg(grad_accum=accum, max_steps=5)
        full = train(fresh(FULL), FULL, *enc, c, 0, 1e-3, tok.pad_token_id)
        lora = train(fresh(LORA), LORA, *enc, c, 0, 1e-3, tok.pad_token_id)
        assert full.examples_seen == lora.examples_seen == seen
        assert full.tokens == lora.tokens > 0


def test_divergence_names_the_step(tok, enc):
    with pytest.raises(Diverged) as e:
        train(fresh(FULL), FULL, *enc, cfg(), 0, 1e10, tok.pad_token_id)
    assert e.value.step == 2 and e.value.loss != e.value.loss  # NaN at the second step


def test_early_stopping_keeps_the_best_state(tok):
    prompts = [f"Item {i}: the colour is" for i in range(8)]
    train_rows = encode(tok, [{"prompt": p, "completion": " red"} for p in prompts], 32)
    val_rows = encode(tok, [{"prompt": p, "completion": " blue"} for p in prompts], 32)
    c = cfg(max_steps=30, eval_every=1, early_stopping_patience=2, schedule="constant")
    model = fresh(FULL)
    res = train(model, FULL, train_rows, val_rows, c, 0, 3e-3, tok.pad_token_id)
    assert res.stopped_early and res.summary()["stopped_early"] is True
    assert res.steps < 30 and res.examples_seen == res.steps * 4 and len(res.log) == res.steps
    vals = [v["val_loss"] for v in res.val_curve]
    best = vals.index(min(vals))
    assert len(vals) == best + 1 + 2  # two evaluations without improvement, then stop
    assert res.best_val_loss == min(vals) < res.final_val_loss == vals[-1]
    # the model handed back is the best one, not the last
    assert validation_loss(model, val_rows, tok.pad_token_id, 4) == pytest.approx(min(vals), rel=1e-6)


def test_no_validation_split(tok, enc, tmp_path):
    """Without validation rows the loop trains and skips evaluation; the search, which needs them, says so."""
    res = train(fresh(FULL), FULL, enc[0], [], cfg(), 0, 1e-3, tok.pad_token_id)
    assert len(res.log) == 6 and res.val_curve == [] and math.isnan(res.best_val_loss)
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    d = tiny_study_dict(tmp_path / "run", corpus, arms=["full"], data={"val_fraction": 0.0},
                        training={"lr_search": {"enabled": True, "steps": 2}})
    with pytest.raises(UserError) as e:
        _train_stage(study_from_dict(d, "s.yaml"))
    assert "data.val_fraction" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "run" / "full").exists()


class Killed(Exception):
    pass


def test_resume_in_process_matches_uninterrupted(tok, enc, tmp_path):
    """Stop after step 5 (checkpoint at 4), start again from the checkpoint: same curve, same weights."""
    c = cfg(max_steps=8, checkpoint_every=2, eval_every=2)
    whole = fresh(LORA_DROP)
    ref = train(whole, LORA_DROP, *enc, c, 0, 1e-2, tok.pad_token_id)

    def kill_at_5(row):
        if row["step"] == 5:
            raise Killed

    with pytest.raises(Killed):
        train(fresh(LORA_DROP), LORA_DROP, *enc, c, 0, 1e-2, tok.pad_token_id, checkpoint=tmp_path, on_step=kill_at_5)
    assert read_json(tmp_path / "state.json")["step"] == 4
    resumed = fresh(LORA_DROP)
    res = train(resumed, LORA_DROP, *enc, c, 0, 1e-2, tok.pad_token_id, checkpoint=tmp_path)
    assert [r["loss"] for r in res.log] == [r["loss"] for r in ref.log]
    assert res.val_curve == ref.val_curve
    a, b = dict(whole.named_parameters()), dict(resumed.named_parameters())
    for n in a:
        assert torch.equal(a[n], b[n]), n


# ---------------------------------------------------------------- saved weights


def test_lora_adapter_reloads_with_peft(tok, enc, tmp_path):
    from peft import PeftModel

    model = fresh(LORA)
    train(model, LORA, *enc, cfg(), 0, 3e-2, tok.pad_token_id)
    rd = RunDir(tmp_path)
    rd.save_weights("lora-r2", 0, lambda p: save_final(model, LORA, p), "lora")
    folder = rd.weights_dir("lora-r2", 0, "lora")
    assert (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()
    want = logits(model, tok)
    peft = PeftModel.from_pretrained(models.load_model("tiny-random"), str(folder)).eval()
    bank = ArmBank(models.load_model("tiny-random").eval())
    bank.add_lora("lora-r2@0", folder)
    with bank.use("lora-r2@0") as m:
        in_bank = logits(m, tok)
    with bank.use("base") as m:
        base = logits(m, tok)
    torch.testing.assert_close(logits(peft, tok), want, atol=1e-5, rtol=0)
    torch.testing.assert_close(in_bank, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(base, logits(models.load_model("tiny-random").eval(), tok), atol=1e-6, rtol=0)
    assert (want - base).abs().max() > 1e-3  # the adapter changed the model


def test_full_weights_reload(tok, enc, tmp_path):
    from transformers import AutoModelForCausalLM

    model = fresh(FULL)
    train(model, FULL, *enc, cfg(), 0, 1e-3, tok.pad_token_id)
    rd = RunDir(tmp_path)
    rd.save_weights("full", 0, lambda p: save_final(model, FULL, p), "full")
    folder = rd.weights_dir("full", 0, "full")
    assert list(folder.glob("*.safetensors")) and not list(tmp_path.rglob("*.tmp"))
    again = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    want = logits(model, tok)
    torch.testing.assert_close(logits(again, tok), want, atol=1e-5, rtol=0)
    assert (want - logits(models.load_model("tiny-random").eval(), tok)).abs().max() > 1e-3


# ---------------------------------------------------------------- the training stage of the runner


def _recording_train(calls: list):
    def wrapped(model, arm, *args, **kw):
        entry = {"arm": arm.name, "lr": args[4], "steps": kw.get("steps"), "stop_after": kw.get("stop_after"),
                 "search": kw.get("checkpoint") is None}
        calls.append(entry)
        try:
            res = train(model, arm, *args, **kw)
        except Diverged:
            entry["val_loss"] = None
            raise
        entry["val_loss"] = res.final_val_loss if math.isfinite(res.final_val_loss) else None
        return res

    return wrapped


def _train_stage(study, force=False):
    """The corpus and training stages of a run; returns (session, train calls)."""
    calls: list[dict] = []
    with pytest.MonkeyPatch.context() as m:
        m.setattr(train_stage, "train", _recording_train(calls))
        s = open_session(study, log=lambda msg: None)
        s = with_executor(dataclasses.replace(s, corpus=corpus_stage.build(s)))
        train_stage.train_all(s, Request(s.arms, force))
    return s, calls


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("finished")
    corpus = write_corpus(tmp / "corpus.jsonl")
    d = tiny_study_dict(tmp / "run", corpus, arms=["base", "full", {"type": "lora", "rank": 2}],
                        training={"lr_search": {"enabled": True, "steps": 2, "full": [1e-4, 1e-3, 1e-2],
                                                "lora": [1e-3, 1e-2, 1e-1], "max_extensions": 1}})
    study = study_from_dict(d, "tiny.yaml")
    r, calls = _train_stage(study)
    return study, r, calls


def _copy(study, tmp_path):
    shutil.copytree(study.output, tmp_path / "run")
    s = copy.deepcopy(study)
    s.output = str(tmp_path / "run")
    return s


def test_lr_search_record_matches_what_ran(finished):
    """Every candidate (extensions included) ran the first 2 steps of the final run's 4-step schedule;
    the record lists what ran, the chosen rate is the best finite one and the final run used it."""
    study, r, calls = finished
    for arm, grid in (("full", [1e-4, 1e-3, 1e-2]), ("lora-r2", [1e-3, 1e-2, 1e-1])):
        search = [c for c in calls if c["arm"] == arm and c["search"]]
        final = [c for c in calls if c["arm"] == arm and not c["search"]]
        rec = r.rd.read_lr_search(arm)
        assert [c["lr"] for c in search[:3]] == grid and len(search) <= 3 + 1
        assert {(c["steps"], c["stop_after"]) for c in search} == {(4, 2)}
        assert rec["schedule_steps"] == 4 and rec["steps"] == 2
        assert rec["candidates"] == [{"lr": c["lr"], "val_loss": c["val_loss"], "steps": 2} for c in search]
        assert [e["lr"] for e in rec["extensions"]] == [c["lr"] for c in search[3:]]
        finite = [c for c in search if c["val_loss"] is not None]
        assert rec["chosen"] == min(finite, key=lambda c: c["val_loss"])["lr"]
        lrs = sorted(c["lr"] for c in search)
        assert rec["interior"] == (lrs[0] < rec["chosen"] < lrs[-1])
        assert len(final) == 1 and final[0]["lr"] == rec["chosen"] and final[0]["stop_after"] is None
        done = r.rd.done(arm, 0)
        assert done["lr"] == rec["chosen"] and done["lr_search"] == rec
        assert read_json(r.rd.arm_dir(arm, 0) / "config.json")["lr"] == rec["chosen"]


def test_arms_saw_the_same_examples(finished):
    study, r, _ = finished
    full, lora = r.rd.done("full", 0), r.rd.done("lora-r2", 0)
    # 15 training rows (the hash split of the 24), batches of 4: 4 + 4 + 4 + 3 in the 4 steps
    assert full["examples_seen"] == lora["examples_seen"] == 15
    assert len(r.rd.train_log("full", 0)) == len(r.rd.train_log("lora-r2", 0)) == 4
    assert not r.rd.checkpoint_dir("full", 0).exists()  # removed once the arm is done


def test_runner_adapter_matches_peft_load(finished, tok):
    from peft import PeftModel

    study, r, _ = finished
    bank = r.bank(r.arms)
    with bank.use("lora-r2@0") as m:
        in_bank = logits(m, tok)
    folder = r.rd.weights_dir("lora-r2", 0, "lora")
    peft = PeftModel.from_pretrained(models.load_model("tiny-random"), str(folder)).eval()
    torch.testing.assert_close(logits(peft, tok), in_bank, atol=1e-5, rtol=0)
    full = r.load_full(0)
    bank.add_full(full)
    with bank.use("full") as m:
        assert m is full


def test_rerun_skips_finished_arms_and_force_retrains(finished, tmp_path):
    study, first, _ = finished
    s = _copy(study, tmp_path)
    _, calls = _train_stage(s)
    assert calls == []
    r, calls = _train_stage(s, force=True)
    # the searches are cached: only the two final trainings run again
    assert [(c["arm"], c["search"]) for c in calls] == [("full", False), ("lora-r2", False)]
    for arm in ("full", "lora-r2"):
        assert [x["loss"] for x in r.rd.train_log(arm, 0)] == [x["loss"] for x in first.rd.train_log(arm, 0)]


def test_changed_training_retrains(finished, tmp_path):
    study, _, _ = finished
    s = _copy(study, tmp_path)
    s.training.max_steps = 3
    r, calls = _train_stage(s)
    # a different training config: a new hash, new search key, so both arms search and train again
    searched = sum(len(r.rd.read_lr_search(a)["candidates"]) for a in ("full", "lora-r2"))
    assert sum(not c["search"] for c in calls) == 2 and sum(c["search"] for c in calls) == searched >= 6
    assert r.rd.done("full", 0)["steps"] == 3


def test_search_cache_survives_a_lost_arm(finished, tmp_path):
    study, _, _ = finished
    s = _copy(study, tmp_path)
    os.unlink(Path(s.output) / "lora-r2" / "seed-0" / "done.json")
    _, calls = _train_stage(s)
    assert [(c["arm"], c["search"]) for c in calls] == [("lora-r2", False)]


# ---------------------------------------------------------------- resume after SIGKILL


def _run_cmd(study_path: Path) -> list[str]:
    return [sys.executable, "-m", "lorafair", "run", str(study_path), "--no-analyses", "--no-report"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted(tmp_path):
    """Kill `lorafair run` once the first arm has checkpointed step 10, run it again: the loss curve
    and the final weights equal those of an uninterrupted run."""
    from safetensors.torch import load_file

    corpus = write_corpus(tmp_path / "corpus.jsonl")
    sections = dict(arms=[{"type": "lora", "rank": 2, "dropout": 0.1}, "full"],
                    training={"max_steps": 30, "checkpoint_every": 5, "eval_every": 10, "lr_lora": 1e-2})
    killed = write_yaml(tmp_path / "killed.yaml", tiny_study_dict(tmp_path / "killed", corpus, **sections))

    proc = subprocess.Popen(_run_cmd(killed), env=_env(), cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = tmp_path / "killed" / "lora-r2" / "seed-0" / "checkpoint" / "state.json"
    ck, deadline = {"step": 0}, time.time() + 240
    try:
        while ck["step"] < 10:
            assert proc.poll() is None, "the run ended before it could be interrupted"
            assert time.time() < deadline, "no checkpoint appeared"
            if state.is_file():
                ck = read_json(state)
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert ck["step"] < 30 and not (state.parent.parent / "done.json").exists()
    first_rows = ck["log"][:10]

    again = subprocess.run(_run_cmd(killed), env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    whole = study_from_dict(tiny_study_dict(tmp_path / "whole", corpus, **sections), "whole.yaml")
    Runner(whole, log=lambda m: None).run(analyses=False, report=False)

    for arm, weights in (("lora-r2", "adapter/adapter_model.safetensors"), ("full", "model/model.safetensors")):
        a = read_jsonl(tmp_path / "killed" / arm / "seed-0" / "train_log.jsonl")
        b = read_jsonl(tmp_path / "whole" / arm / "seed-0" / "train_log.jsonl")
        assert [x["step"] for x in a] == list(range(1, 31))
        assert [x["loss"] for x in a] == pytest.approx([x["loss"] for x in b], abs=1e-6)
        wa = load_file(tmp_path / "killed" / arm / "seed-0" / weights)
        wb = load_file(tmp_path / "whole" / arm / "seed-0" / weights)
        assert wa.keys() == wb.keys()
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0)
    # the first steps were not trained again: their rows (timings included) come from the killed process
    a = read_jsonl(tmp_path / "killed" / "lora-r2" / "seed-0" / "train_log.jsonl")
    assert a[:10] == first_rows
