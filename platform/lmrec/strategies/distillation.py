"""Knowledge distillation: ``loss = loss_student + λ · loss_kd`` with a frozen teacher.

``loss_kd`` has two parts (each with its own weight):
- ratings: MSE between the student's and the teacher's predicted ratings on the batch's (user, item) pairs;
- item scores: temperature-scaled KL(teacher || student) between the two softmax distributions over all items
  for the batch's users, times T² so its gradient scale does not shrink with T (Hinton et al. 2015).

The teacher is a two-tower artifact (``Teacher.from_artifact``) run without gradient: its user/item tables are
precomputed once (the artifact stores them), so a distillation step costs two table lookups and one matmul and
never runs the teacher's encoder. Any ``Recommender`` can also teach (``Teacher.from_recommender``).

Students: the two-tower recipe plugs ``DistillationTask`` into its multi-task objective (a smaller encoder, e.g.
from ``layer_sharing``); ``DistilledMF`` is a biased MF student trained the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from lmrec.models.baselines.interactions import check_pairs, check_train, known


class Teacher:
    """Frozen score tables: ``ratings(u, i)`` for aligned pairs, ``item_logits(u)`` [len(u), n_items].

    ``logit_scale`` turns the teacher's ranking scores into softmax logits: a two-tower ranks by cosine, which it
    was trained to divide by its click temperature, so that temperature's inverse is the natural scale.
    """

    def __init__(self, rating_fn, score_fn, n_users: int, n_items: int, logit_scale: float = 1.0) -> None:
        self._rating_fn, self._score_fn = rating_fn, score_fn
        self.n_users, self.n_items, self.logit_scale = n_users, n_items, logit_scale

    @classmethod
    def from_artifact(cls, directory: str | Path, device: str | torch.device = "cpu") -> "Teacher":
        """Load a verified two-tower artifact and keep only its precomputed tables (the encoder is dropped)."""
        from lmrec.artifacts.two_tower import load_artifact

        art = load_artifact(directory, device="cpu")
        t = {k: v.float().to(device) for k, v in art.embeddings.items()}
        mean = float(art.model.global_mean)
        user_bias = art.model.user_bias.weight[:, 0].detach().float().to(device)
        cfg = art.manifest.get("config", {})
        temperature = float(cfg.get("tasks", {}).get("click", {}).get("temperature", 0.1))
        interest = art.model.ranking_head == "interest"
        n_users, n_items = art.model.n_users, art.model.n_items
        del art  # the encoder weights are the bulk of the artifact and a teacher never runs them

        def rating_fn(u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
            dot = (t["user_vectors"][u] * t["item_vectors"][i]).sum(-1)
            return mean + user_bias[u] + t["item_bias"][i] + dot

        def score_fn(u: torch.Tensor) -> torch.Tensor:
            if interest:
                return t["user_interest"][u] @ t["item_interest"].T + t["item_interest_bias"][None, :]
            return t["user_vectors"][u] @ t["item_vectors"].T + t["item_bias"][None, :]

        return cls(rating_fn, score_fn, n_users, n_items, 1.0 / temperature if interest else 1.0)

    @classmethod
    def from_recommender(cls, recommender, n_users: int, n_items: int, logit_scale: float = 1.0) -> "Teacher":
        """Any fitted ``Recommender`` as a teacher (its numpy outputs become tensors)."""

        def rating_fn(u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
            out = recommender.predict(u.cpu().numpy(), i.cpu().numpy())
            return torch.as_tensor(np.asarray(out), dtype=torch.float32, device=u.device)

        def score_fn(u: torch.Tensor) -> torch.Tensor:
            out = recommender.score_items(u.cpu().numpy())
            return torch.as_tensor(np.asarray(out), dtype=torch.float32, device=u.device)

        return cls(rating_fn, score_fn, n_users, n_items, logit_scale)

    # no_grad, not inference_mode: the outputs are constants inside the student's autograd graph, and
    # inference tensors cannot be saved for backward
    @torch.no_grad()
    def ratings(self, user_idx: torch.Tensor, item_idx: torch.Tensor) -> torch.Tensor:
        return self._rating_fn(user_idx, item_idx).float()

    @torch.no_grad()
    def item_logits(self, user_idx: torch.Tensor) -> torch.Tensor:
        return self._score_fn(user_idx).float() * self.logit_scale


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
          mask: torch.Tensor | None = None) -> torch.Tensor:
    """T² · KL(softmax(teacher/T) || softmax(student/T)), batch mean; ``mask`` [n_items] False = left out."""
    if mask is not None:
        student_logits = student_logits.masked_fill(~mask[None, :], float("-inf"))
        teacher_logits = teacher_logits.masked_fill(~mask[None, :], float("-inf"))
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    p_teacher = F.softmax(teacher_logits.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    # masked entries have p_teacher = 0; where() keeps 0 * (-inf - -inf) from turning into NaN
    terms = torch.where(p_teacher > 0, p_teacher * (log_p_teacher - log_p_student), torch.zeros_like(p_teacher))
    return terms.sum(-1).mean() * temperature**2


class DistillationTask:
    """The distillation term as a task of the two-tower ``MultiTaskObjective`` (its ``weight`` is λ)."""

    name = "distill"

    def __init__(self, teacher: Teacher, weight: float = 1.0, rating_weight: float = 1.0, scores_weight: float = 1.0,
                 temperature: float = 2.0, student_temperature: float = 0.1, max_users: int = 256) -> None:
        self.teacher, self.weight = teacher, weight
        self.rating_weight, self.scores_weight = rating_weight, scores_weight
        self.temperature, self.student_temperature, self.max_users = temperature, student_temperature, max_users

    def check_compatible(self, n_users: int, n_items: int) -> None:
        if (n_users, n_items) != (self.teacher.n_users, self.teacher.n_items):
            raise ValueError(f"teacher was trained on {self.teacher.n_users} users x {self.teacher.n_items} items, "
                             f"the student on {n_users} x {n_items}: indices would not line up")

    def loss(self, model, ctx) -> tuple[torch.Tensor, dict[str, float]]:
        total = ctx.user_vec.sum() * 0.0
        logs: dict[str, float] = {}
        if self.rating_weight > 0:
            pred = model.rating(ctx.user_vec, ctx.user_idx, ctx.item_vec[ctx.item_idx], ctx.item_bias[ctx.item_idx])
            mse = F.mse_loss(pred.float(), self.teacher.ratings(ctx.user_idx, ctx.item_idx).to(pred.device))
            total = total + self.rating_weight * mse
            logs["rating_mse"] = float(mse.detach())
        if self.scores_weight > 0:
            # one row per distinct user (rows of one user share the user vector up to the left-out item)
            users, first = np.unique(ctx.user_idx.cpu().numpy(), return_index=True)
            rows = torch.as_tensor(first[: self.max_users], device=ctx.user_vec.device)
            student = model.interest(ctx.user_vec[rows]) @ ctx.item_interest(model).T
            student = (student + model.interest_biases(ctx.text)[None, :]) / self.student_temperature
            teacher = self.teacher.item_logits(ctx.user_idx[rows]).to(student.device)
            kl = kd_kl(student, teacher, self.temperature, model.item_tower.seen)
            total = total + self.scores_weight * kl
            logs["kl"] = float(kl.detach())
        return total, logs


class DistilledMF:
    """Biased MF student: MSE on ratings + λ · (rating MSE to the teacher + T² KL on item-score softmaxes).

    The KL term is computed each step for up to ``kd_users`` of the batch's users against all items, which is what
    carries the teacher's *ranking* knowledge into a model that only ever sees ratings.
    """

    name = "distilled_mf"
    rates = True

    def __init__(self, teacher: Teacher, dim: int = 64, l2: float = 0.1, lam: float = 1.0, rating_weight: float = 1.0,
                 scores_weight: float = 1.0, temperature: float = 2.0, lr: float = 0.01, epochs: int = 20,
                 batch_size: int = 4096, kd_users: int = 128, seed: int = 0) -> None:
        self.teacher, self.dim, self.l2, self.lam = teacher, dim, l2, lam
        self.rating_weight, self.scores_weight, self.temperature = rating_weight, scores_weight, temperature
        self.lr, self.epochs, self.batch_size, self.kd_users, self.seed = lr, epochs, batch_size, kd_users, seed

    def fit(self, train: pd.DataFrame, n_users: int, n_items: int) -> "DistilledMF":
        check_train(train, n_users, n_items)
        if (n_users, n_items) != (self.teacher.n_users, self.teacher.n_items):
            raise ValueError("teacher and student index spaces differ")
        gen = torch.Generator().manual_seed(self.seed)
        u = torch.as_tensor(train["user_idx"].to_numpy(np.int64, copy=True))
        i = torch.as_tensor(train["item_idx"].to_numpy(np.int64, copy=True))
        r = torch.as_tensor(train["rating"].to_numpy(np.float32, copy=True))
        self.mean_ = float(r.mean())
        self.rating_range_ = (float(r.min()), float(r.max()))
        p = (torch.randn(n_users, self.dim, generator=gen) * 0.1).requires_grad_()
        q = (torch.randn(n_items, self.dim, generator=gen) * 0.1).requires_grad_()
        bu = torch.zeros(n_users, requires_grad=True)
        bi = torch.zeros(n_items, requires_grad=True)
        opt = torch.optim.Adam([p, q, bu, bi], lr=self.lr)
        seen = torch.zeros(n_items, dtype=torch.bool)
        seen[i] = True
        self.loss_history_: list[float] = []
        for _ in range(self.epochs):
            order = torch.randperm(len(r), generator=gen)
            total = 0.0
            for start in range(0, len(r), self.batch_size):
                rows = order[start : start + self.batch_size]
                bu_, bi_, rr = u[rows], i[rows], r[rows]
                pu, qi = F.embedding(bu_, p), F.embedding(bi_, q)
                pred = self.mean_ + bu[bu_] + bi[bi_] + (pu * qi).sum(-1)
                reg = pu.square().sum(-1) + qi.square().sum(-1) + bu[bu_].square() + bi[bi_].square()
                loss = F.mse_loss(pred, rr) + self.l2 * reg.mean()
                kd = pred.new_zeros(())
                if self.rating_weight > 0:
                    kd = kd + self.rating_weight * F.mse_loss(pred, self.teacher.ratings(bu_, bi_))
                if self.scores_weight > 0:
                    users = torch.unique(bu_)
                    users = users[torch.randperm(len(users), generator=gen)[: self.kd_users]]
                    student = p[users] @ q.T + bi[None, :]
                    kd = kd + self.scores_weight * kd_kl(student, self.teacher.item_logits(users), self.temperature,
                                                         seen)
                loss = loss + self.lam * kd
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(rows)
            self.loss_history_.append(total / len(r))
        self.user_seen_ = np.bincount(u.numpy(), minlength=n_users) > 0
        self.item_seen_ = seen.numpy()
        with torch.no_grad():
            self.user_factors_ = p.numpy() * self.user_seen_[:, None]
            self.item_factors_ = q.numpy() * self.item_seen_[:, None]
            self.user_bias_ = bu.numpy() * self.user_seen_
            self.item_bias_ = bi.numpy() * self.item_seen_
        return self

    def predict(self, user_idx: np.ndarray, item_idx: np.ndarray) -> np.ndarray:
        u, i = check_pairs(user_idx, item_idx)
        u_ok, u_safe = known(u, self.user_seen_)
        i_ok, i_safe = known(i, self.item_seen_)
        dot = ((self.user_factors_[u_safe] * u_ok[:, None]) * (self.item_factors_[i_safe] * i_ok[:, None])).sum(1)
        est = self.mean_ + self.user_bias_[u_safe] * u_ok + self.item_bias_[i_safe] * i_ok + dot
        return np.clip(est, *self.rating_range_).astype(np.float32)

    def score_items(self, user_idx: np.ndarray) -> np.ndarray:
        ok, safe = known(np.asarray(user_idx), self.user_seen_)
        p = self.user_factors_[safe] * ok[:, None]
        scores = self.mean_ + (self.user_bias_[safe] * ok)[:, None] + self.item_bias_[None, :] + p @ self.item_factors_.T
        return scores.astype(np.float32)
