"""Knowledge distillation: the KD loss, teachers (recommender and artifact) and students (MF, two-tower task)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmrec.models.baselines.mf import BiasedMF
from lmrec.strategies.distillation import DistillationTask, DistilledMF, Teacher, kd_kl


def test_kd_kl_is_zero_at_agreement_and_scaled_by_t_squared():
    gen = torch.Generator().manual_seed(0)
    t = torch.randn(4, 9, generator=gen)
    assert float(kd_kl(t.clone(), t, 2.0)) == pytest.approx(0.0, abs=1e-6)
    s = torch.randn(4, 9, generator=gen)
    ref = torch.nn.functional.kl_div(torch.log_softmax(s / 3, 1), torch.softmax(t / 3, 1), reduction="batchmean")
    assert float(kd_kl(s, t, 3.0)) == pytest.approx(9 * float(ref), rel=1e-5)
    # masked items take no part: changing a masked logit changes nothing
    mask = torch.ones(9, dtype=torch.bool)
    mask[0] = False
    s2 = s.clone()
    s2[:, 0] += 50
    assert float(kd_kl(s2, t, 2.0, mask)) == pytest.approx(float(kd_kl(s, t, 2.0, mask)), rel=1e-6)
    assert torch.isfinite(kd_kl(s, t, 2.0, mask))


def test_mf_student_learns_the_teachers_scores(synthetic_ratings):
    train = synthetic_ratings(n_users=50, n_items=30, per_user=12)
    teacher_mf = BiasedMF(dim=8, epochs=60, lr=0.05, l2=0.02).fit(train, 50, 30)
    teacher = Teacher.from_recommender(teacher_mf, 50, 30)
    users = np.arange(50)
    items = np.tile(np.arange(30), 50)
    target = teacher_mf.predict(np.repeat(users, 30), items)

    def gap(lam):
        student = DistilledMF(teacher, dim=8, lam=lam, epochs=25, batch_size=200, lr=0.03, seed=1)
        student.fit(train, 50, 30)
        return float(np.mean((student.predict(np.repeat(users, 30), items) - target) ** 2)), student

    gap_plain, _ = gap(0.0)
    gap_kd, student = gap(3.0)
    # on the items nobody rated for a user only the teacher says anything: distillation transfers it
    assert gap_kd < 0.5 * gap_plain
    assert student.score_items(np.array([0, 1])).shape == (2, 30)


def test_teacher_index_space_is_checked(synthetic_ratings):
    train = synthetic_ratings(n_users=10, n_items=8, per_user=4)
    teacher = Teacher.from_recommender(BiasedMF(dim=2, epochs=2).fit(train, 10, 8), 10, 8)
    with pytest.raises(ValueError, match="index spaces"):
        DistilledMF(teacher, epochs=1).fit(train, 11, 8)
    with pytest.raises(ValueError, match="indices would not line up"):
        DistillationTask(teacher).check_compatible(10, 9)
