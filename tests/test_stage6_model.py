"""Stage 6 model: parity with transformers' BertModel, BertForPreTraining and BertForSequenceClassification after
copying weights (on a padded batch), fused attention = written-out attention (outputs and gradients), padding changes
nothing at the real positions, the MLM output layer is the token embedding, masked-position-only MLM logits and loss =
the full ones, classifier losses, loading a pre-trained backbone, init, config checks, state dict round trip."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stage6_bert.model import (Bert, BertClassifier, BertConfig, BertPretrain, configure_optimizer, from_hf_bert,
                               hf_bert_config, to_hf_bert)

V, MAXPOS, C = 60, 24, 32
LENGTHS = [12, 7, 3]  # a padded batch: row 0 is full, rows 1 and 2 end in pads


def cfg(**kw) -> BertConfig:
    base = dict(vocab_size=V, max_position=MAXPOS, hidden=C, n_layer=2, n_head=4, dropout=0.0, attn_dropout=0.0)
    return BertConfig(**{**base, **kw})


def perturb(model: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    """Move every parameter off its init (gains 1 and biases 0 would hide a bad copy); eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g), alpha=scale)
    return model.eval()


def make(kind=Bert, seed: int = 0, **kw):
    torch.manual_seed(seed)
    return perturb(kind(cfg(**kw)), seed)


def batch(lengths=LENGTHS, seed: int = 1):
    """ids (B, T) with [CLS]-like first tokens, pads (id 0) after each row's length; segments 0 then 1; the mask."""
    g = torch.Generator().manual_seed(seed)
    B, T = len(lengths), max(lengths)
    ids = torch.randint(1, V, (B, T), generator=g)
    mask = (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).long()   # (B, T) 1 = real
    ids = ids * mask                                                             # pads are token 0
    segments = (torch.arange(T)[None, :] >= torch.tensor(lengths)[:, None] // 2).long() * mask
    return ids, segments, mask


@pytest.fixture(scope="module")
def hf():
    return pytest.importorskip("transformers")


def twin(hf, norm: str, kind: str):
    """The transformers class of the same layout: BertModel, ... (post-norm) or MegatronBertModel, ... (pre-norm)."""
    return getattr(hf, kind.replace("Bert", "MegatronBert", 1) if norm == "pre" else kind)


@pytest.mark.parametrize("norm", ["post", "pre"])
@pytest.mark.parametrize("attn", ["sdpa", "manual"])
def test_encoder_matches_hf_bert_model(hf, attn, norm):
    ours = make(attn=attn, norm=norm)
    theirs = twin(hf, norm, "BertModel")(hf_bert_config(ours.cfg)).eval()
    assert theirs.config._attn_implementation == ("eager" if attn == "manual" or norm == "pre" else "sdpa")
    theirs.load_state_dict(to_hf_bert(ours))   # strict: every name on both sides
    assert sum(p.numel() for p in theirs.parameters()) == sum(p.numel() for p in ours.parameters())
    ids, segments, mask = batch()
    with torch.no_grad():
        ref = theirs(input_ids=ids, token_type_ids=segments, attention_mask=mask)
        hidden, pooled = ours(ids, token_type_ids=segments, attention_mask=mask)
    real = mask.bool()
    assert (hidden[real] - ref.last_hidden_state[real]).abs().max() <= 1e-5   # pad positions mean nothing
    assert (pooled - ref.pooler_output).abs().max() <= 1e-5


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_pretraining_heads_and_loss_match_hf_bert_for_pretraining(hf, norm):
    ours = make(BertPretrain, norm=norm)
    theirs = twin(hf, norm, "BertForPreTraining")(hf_bert_config(ours.cfg)).eval()
    theirs.load_state_dict(to_hf_bert(ours))
    ids, segments, mask = batch()
    mlm_labels = torch.full_like(ids, -100)
    mlm_labels[0, [1, 4, 9]], mlm_labels[1, [2, 5]], mlm_labels[2, 1] = 7, 8, 9
    nsp_labels = torch.tensor([0, 1, 1])
    with torch.no_grad():
        ref = theirs(input_ids=ids, token_type_ids=segments, attention_mask=mask, labels=mlm_labels,
                     next_sentence_label=nsp_labels)
        full = ours(ids, token_type_ids=segments, attention_mask=mask)   # no labels: logits at every position
        out = ours(ids, token_type_ids=segments, attention_mask=mask, mlm_labels=mlm_labels, nsp_labels=nsp_labels)
    assert full.mlm_logits.shape == (3, 12, V) and full.loss is None
    assert (full.mlm_logits - ref.prediction_logits).abs().max() <= 1e-5   # pad rows too: they read the real keys
    assert (full.nsp_logits - ref.seq_relationship_logits).abs().max() <= 1e-5
    assert abs(out.loss.item() - ref.loss.item()) <= 1e-5
    assert torch.allclose(out.loss, out.mlm_loss + out.nsp_loss)


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_from_hf_bert_and_back(hf, norm):
    torch.manual_seed(0)
    config = (hf.MegatronBertConfig if norm == "pre" else hf.BertConfig)(vocab_size=V, hidden_size=C, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=MAXPOS, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0, num_labels=3)
    ids, segments, mask = batch()
    for kind in (twin(hf, norm, k) for k in ("BertModel", "BertForPreTraining", "BertForSequenceClassification")):
        theirs = perturb(kind(config))
        ours = from_hf_bert(theirs).eval()
        assert ours.cfg.intermediate == 64 and ours.cfg.norm == norm
        with torch.no_grad():
            ref = theirs(input_ids=ids, token_type_ids=segments, attention_mask=mask)
            got = ours(ids, token_type_ids=segments, attention_mask=mask)
        if kind.__name__.endswith("BertModel"):
            assert (got[1] - ref.pooler_output).abs().max() <= 1e-5
        elif kind.__name__.endswith("BertForPreTraining"):
            assert (got.mlm_logits - ref.prediction_logits).abs().max() <= 1e-5
            assert ours.mlm.decoder.weight is ours.bert.tok_emb.weight
        else:
            assert (got[0] - ref.logits).abs().max() <= 1e-5
        theirs_sd = theirs.state_dict()
        for name, tensor in to_hf_bert(ours).items():
            assert torch.equal(tensor, theirs_sd[name]), name
    with pytest.raises(ValueError, match="BertForMaskedLM"):
        from_hf_bert(twin(hf, norm, "BertForMaskedLM")(config))


def test_sdpa_attention_equals_manual_attention():
    fast = make(BertPretrain)   # attn="sdpa", the default
    slow = BertPretrain(cfg(attn="manual")).eval()
    slow.load_state_dict(fast.state_dict())
    ids, segments, mask = batch()
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
    outs = [m(ids, token_type_ids=segments, attention_mask=mask, mlm_labels=labels, nsp_labels=torch.tensor([0, 1, 0]))
            for m in (fast, slow)]
    assert torch.allclose(outs[0].mlm_logits, outs[1].mlm_logits, atol=1e-5)
    assert torch.allclose(outs[0].nsp_logits, outs[1].nsp_logits, atol=1e-5)
    for out in outs:
        out.loss.backward()
    for (name, a), b in zip(fast.named_parameters(), slow.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6, rtol=1e-4), name


@pytest.mark.parametrize("attn", ["sdpa", "manual"])
def test_padding_changes_nothing_at_the_real_positions(attn):
    model = make(attn=attn)
    ids, segments, _ = batch([7], seed=3)
    alone_hidden, alone_pooled = model(ids, token_type_ids=segments)
    # five more positions, masked out; their ids are random real tokens, to show that the mask (not id 0) hides them
    padded = torch.cat([ids, torch.randint(1, V, (1, 5))], dim=1)
    mask = torch.cat([torch.ones(1, 7), torch.zeros(1, 5)], dim=1)
    hidden, pooled = model(padded, token_type_ids=F.pad(segments, (0, 5)), attention_mask=mask)
    assert torch.allclose(hidden[:, :7], alone_hidden, atol=1e-6)
    assert torch.allclose(pooled, alone_pooled, atol=1e-6)
    # without a mask, the pad id is what is left out: the same result for pads of id 0
    zero_padded = F.pad(ids, (0, 5), value=model.cfg.pad_id)
    assert torch.allclose(model(zero_padded, token_type_ids=F.pad(segments, (0, 5)))[1], alone_pooled, atol=1e-6)
    # while a real token in place of a pad does change the outputs
    unmasked, _ = model(padded, token_type_ids=F.pad(segments, (0, 5)))
    assert not torch.allclose(unmasked[:, :7], alone_hidden, atol=1e-4)


def test_mlm_output_layer_is_the_token_embedding():
    model = make(BertPretrain)
    assert model.mlm.decoder.weight is model.bert.tok_emb.weight
    assert model.mlm.decoder.bias is not None and model.mlm.decoder.bias.shape == (V,)   # its own output bias
    ids, segments, mask = batch()
    with torch.no_grad():
        model.bert.tok_emb.weight[5].zero_()   # one write changes both uses: token 5's input vector and its score
        model.mlm.decoder.bias[5] = 0.25
    logits = model(ids, token_type_ids=segments, attention_mask=mask).mlm_logits
    assert torch.allclose(logits[..., 5], torch.tensor(0.25), atol=1e-6)
    model.train()
    labels = torch.where(mask.bool(), ids, torch.full_like(ids, -100))
    model(ids, token_type_ids=segments, attention_mask=mask, mlm_labels=labels).loss.backward()
    optimizer = configure_optimizer(model, lr=1e-2, weight_decay=0.01)
    optimizer.step()
    assert model.mlm.decoder.weight is model.bert.tok_emb.weight
    decay, no_decay = optimizer.param_groups
    ids_listed = [id(p) for group in (decay, no_decay) for p in group["params"]]
    assert len(ids_listed) == len(set(ids_listed)) and set(ids_listed) == {id(p) for p in model.parameters()}
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert no_decay_names == {n for n in names.values() if n.endswith("bias") or "norm" in n}


def test_masked_only_logits_equal_the_full_logits_at_the_masked_positions():
    model = make(BertPretrain)
    ids, segments, mask = batch()
    labels = torch.full_like(ids, -100)
    labels[0, [0, 3, 11]], labels[2, 2] = ids[0, [0, 3, 11]], ids[2, 2]
    kw = dict(token_type_ids=segments, attention_mask=mask, mlm_labels=labels)
    gathered = model(ids, **kw)
    full = model(ids, **kw, masked_only=False)
    assert gathered.mlm_logits.shape == (4, V) and full.mlm_logits.shape == (3, 12, V)
    assert torch.allclose(gathered.mlm_logits, full.mlm_logits[labels != -100], atol=1e-6)
    assert torch.allclose(gathered.mlm_loss, F.cross_entropy(full.mlm_logits.view(-1, V), labels.view(-1)), atol=1e-6)
    assert gathered.nsp_loss is None and torch.equal(gathered.loss, gathered.mlm_loss)
    nothing = model(ids, token_type_ids=segments, attention_mask=mask, mlm_labels=torch.full_like(ids, -100))
    assert nothing.mlm_logits.shape == (0, V) and nothing.mlm_loss.item() == 0.0   # not NaN


def test_classifier_regression_and_classification_losses():
    ids, segments, mask = batch()
    regressor = perturb(BertClassifier(cfg(), num_labels=1))
    scores = torch.tensor([0.5, 3.0, 4.5])
    logits, loss = regressor(ids, token_type_ids=segments, attention_mask=mask, labels=scores)
    assert logits.shape == (3, 1) and torch.allclose(loss, F.mse_loss(logits[:, 0], scores))
    classifier = perturb(BertClassifier(cfg(), num_labels=3))
    classes = torch.tensor([2, 0, 1])
    logits, loss = classifier(ids, token_type_ids=segments, attention_mask=mask, labels=classes)
    assert logits.shape == (3, 3) and torch.allclose(loss, F.cross_entropy(logits, classes))
    assert classifier(ids, attention_mask=mask)[1] is None
    with pytest.raises(ValueError, match="num_labels"):
        BertClassifier(cfg(), num_labels=0)


def test_a_regressor_learns_standardised_targets_and_answers_in_label_units():
    """label_shift and label_scale: the head's raw output z is read as (y - shift) / scale. The model returns
    z * scale + shift, and the loss is the squared error in standard units, (z - (y - shift) / scale)^2."""
    ids, segments, mask = batch()
    plain = perturb(BertClassifier(cfg(), num_labels=1))
    scaled = BertClassifier(cfg(), num_labels=1, label_shift=2.7, label_scale=1.5)
    scaled.load_state_dict(plain.state_dict())   # the same weights: z is the same
    scores = torch.tensor([0.5, 3.0, 4.5])
    z, _ = plain(ids, token_type_ids=segments, attention_mask=mask)
    out, loss = scaled(ids, token_type_ids=segments, attention_mask=mask, labels=scores)
    assert torch.allclose(out, z * 1.5 + 2.7, atol=1e-6)
    assert torch.allclose(loss, F.mse_loss(z[:, 0], (scores - 2.7) / 1.5), atol=1e-6)
    assert set(scaled.state_dict()) == set(plain.state_dict())   # plain numbers, not weights
    with pytest.raises(ValueError, match="label_scale"):
        BertClassifier(cfg(), num_labels=1, label_scale=0)


def test_mean_pooling_averages_the_real_tokens_only():
    ids, segments, mask = batch()
    classifier = perturb(BertClassifier(cfg(), num_labels=2, pooling="mean"))
    hidden, _ = classifier.bert(ids, token_type_ids=segments, attention_mask=mask)
    by_hand = torch.stack([hidden[i, :n].mean(0) for i, n in enumerate(LENGTHS)])      # (B, C)
    logits, _ = classifier(ids, token_type_ids=segments, attention_mask=mask)
    assert torch.allclose(logits, classifier.head(by_hand), atol=1e-6)
    # the same rows without their pads, one at a time: the same logits
    for i, n in enumerate(LENGTHS):
        alone, _ = classifier(ids[i:i + 1, :n], token_type_ids=segments[i:i + 1, :n])
        assert torch.allclose(alone, logits[i:i + 1], atol=1e-5)
    cls_head = BertClassifier(cfg(), num_labels=2)
    cls_head.load_state_dict(classifier.state_dict())                   # the same weights, read at [CLS] instead
    assert not torch.allclose(cls_head.eval()(ids, attention_mask=mask)[0], classifier(ids, attention_mask=mask)[0])
    with pytest.raises(ValueError, match="pooling"):
        BertClassifier(cfg(), num_labels=2, pooling="max")


def test_classifier_loads_the_backbone_of_a_pretraining_checkpoint(tmp_path):
    pretrained = make(BertPretrain)
    torch.save({"model": pretrained.state_dict(), "config": pretrained.cfg.to_dict()}, tmp_path / "ckpt.pt")
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    classifier = BertClassifier(BertConfig.from_dict(ckpt["config"]), num_labels=2).load_backbone(ckpt["model"]).eval()
    ids, segments, mask = batch()
    for a, b in zip(classifier.bert(ids, token_type_ids=segments, attention_mask=mask),
                    pretrained.bert(ids, token_type_ids=segments, attention_mask=mask)):
        assert torch.equal(a, b)
    assert classifier.head.bias.abs().sum() == 0   # the head keeps its init
    BertClassifier(cfg(), num_labels=2).load_backbone(pretrained.bert.state_dict())   # a bare encoder's state dict
    with pytest.raises(RuntimeError, match="size mismatch"):
        BertClassifier(cfg(hidden=64), num_labels=2).load_backbone(ckpt["model"])


def test_state_dict_round_trip(tmp_path):
    model = make(BertPretrain)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    again = BertPretrain(cfg()).eval()
    again.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    assert again.mlm.decoder.weight is again.bert.tok_emb.weight   # still tied after loading
    ids, segments, mask = batch()
    a, b = model(ids, token_type_ids=segments, attention_mask=mask), again(ids, token_type_ids=segments,
                                                                          attention_mask=mask)
    assert torch.equal(a.mlm_logits, b.mlm_logits) and torch.equal(a.nsp_logits, b.nsp_logits)


def test_sinusoidal_position_init():
    """pos_init="sinusoidal": the learned table starts as sine waves of the init's scale; neighbours are similar."""
    pos = Bert(cfg(pos_init="sinusoidal", hidden=64)).pos_emb.weight.detach()   # (MAXPOS, 64)
    assert pos.abs().max() <= 0.02 * math.sqrt(2) + 1e-7   # waves of amplitude 0.02 sqrt(2): std 0.02 over long T
    assert torch.allclose(pos[3, 0::2] / (0.02 * math.sqrt(2)), torch.sin(3 * 10000.0 ** (-torch.arange(0, 64, 2) / 64)))
    sim = F.cosine_similarity(pos[10:11], pos, dim=1)              # position 10 against all
    assert sim[10] > sim[11] > sim[14] and sim[10] > sim[9] > sim[6]


def test_bert_init():
    model = BertPretrain(cfg(hidden=64, vocab_size=500))
    layer = model.bert.layers[1]
    for weight in (layer.attn.qkv.weight, layer.ffn_in.weight, model.bert.tok_emb.weight[1:], model.mlm.dense.weight):
        assert abs(weight.std().item() - 0.02) < 0.002
    assert (model.bert.tok_emb.weight[0] == 0).all()   # [PAD]
    assert layer.ffn_out.bias.abs().sum() == 0 and model.mlm.decoder.bias.abs().sum() == 0
    assert (layer.attn_norm.weight == 1).all() and (model.bert.emb_norm.bias == 0).all()
    # at init every token is about equally likely: the MLM loss is about ln(V)
    ids = torch.randint(1, 500, (4, 16))
    loss = model(ids, mlm_labels=torch.randint(1, 500, (4, 16))).mlm_loss
    assert abs(loss.item() - math.log(500)) < 0.1


@pytest.mark.parametrize("kw,message", [
    (dict(hidden=30, n_head=4), "not divisible by n_head"),
    (dict(attn="flash"), "attn must be sdpa or manual"),
    (dict(norm="sandwich"), "norm must be post or pre"),
    (dict(pos_init="zeros"), "pos_init must be normal or sinusoidal"),
    (dict(dropout=1.0), "dropout must be in"),
    (dict(attn_dropout=-0.1), "attn_dropout must be in"),
    (dict(vocab_size=0), "vocab_size must be a positive integer"),
    (dict(pad_id=V), "pad_id"),
])
def test_config_rejects_bad_values(kw, message):
    with pytest.raises(ValueError, match=message):
        cfg(**kw)


def test_config_round_trips_through_a_dict_and_inputs_are_checked():
    c = cfg(attn="manual")
    assert c.intermediate == 4 * C and BertConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="max_position"):
        make()(torch.ones(1, MAXPOS + 1, dtype=torch.long))
