"""Layer sharing: a student made of the teacher's embeddings + bottom k blocks."""

from __future__ import annotations

import copy

import pytest
import torch

from lmrec.strategies.layer_sharing import layer_stack, num_layers, truncate_encoder


def _truncated_teacher(teacher, k):
    """The teacher itself run with only its bottom k blocks (the reference the student must reproduce)."""
    t = copy.deepcopy(teacher)
    t.backbone.encoder.layer = torch.nn.ModuleList(list(t.backbone.encoder.layer)[:k])
    t.backbone.config.num_hidden_layers = k
    return t


def test_student_weights_are_the_teachers_bottom_layers(tiny_encoder):
    teacher = tiny_encoder(layers=6)
    student = truncate_encoder(teacher, 3)
    assert num_layers(student) == 3 and student.backbone.config.num_hidden_layers == 3
    t_state, s_state = teacher.backbone.state_dict(), student.backbone.state_dict()
    for key, value in s_state.items():
        torch.testing.assert_close(value, t_state[key], rtol=0, atol=0)
    assert not any(k.startswith("encoder.layer.3.") for k in s_state)
    # a copy, not a view: training the student leaves the teacher alone
    with torch.no_grad():
        layer_stack(student.backbone)[0].attention.self.query.weight.add_(1.0)
    assert not torch.equal(layer_stack(teacher.backbone)[0].attention.self.query.weight,
                           layer_stack(student.backbone)[0].attention.self.query.weight)


def test_student_output_matches_truncated_teacher(tiny_encoder, tokens):
    teacher = tiny_encoder(layers=6)
    ids, mask = tokens
    student = truncate_encoder(teacher, 2).eval()
    with torch.no_grad():
        expected = _truncated_teacher(teacher, 2).eval()(ids, mask)
        full = teacher.eval()(ids, mask)
        got = student(ids, mask)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(got, full, atol=1e-3)  # the top layers really are gone


def test_layer_count_is_checked(tiny_encoder):
    teacher = tiny_encoder(layers=2)
    with pytest.raises(ValueError, match="n_layers must be in 1..2"):
        truncate_encoder(teacher, 3)


@pytest.mark.slow
def test_minilm_three_layer_student_matches_truncated_minilm():
    """The shipped 6-layer MiniLM -> a 3-layer student (the issue's example), on real tokenised text."""
    from lmrec.models.encoder import build_encoder, load_tokenizer

    teacher = build_encoder("default").eval()
    tok = load_tokenizer("default")
    enc = tok(["Toy Story (1995). Genres: Animation, Comedy.", "Heat (1995)."], padding=True, return_tensors="pt")
    student = truncate_encoder(teacher, 3).eval()
    with torch.no_grad():
        got = student(enc["input_ids"], enc["attention_mask"])
        expected = _truncated_teacher(teacher, 3).eval()(enc["input_ids"], enc["attention_mask"])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert sum(p.numel() for p in student.parameters()) < 0.8 * sum(p.numel() for p in teacher.parameters())
