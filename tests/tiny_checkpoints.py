"""Tiny, untrained checkpoints of every model the web demo serves, for tests/test_demo.py and tests/test_demo_e2e.py.

Each is built with its stage's own classes and saved in its stage's own checkpoint format (the dict its train.py,
pretrain.py or finetune.py writes, with the vocabulary or tokenizer file beside it), so the demo loads them with each
stage's own loader. The vocabularies are trained on the tests' tiny texts plus the demo's typical inputs
(scripts/demo_screenshots.py), so those inputs are in-vocabulary. The weights are random: the outputs are nonsense,
but every tab's plumbing runs as it does on the real models, in milliseconds.
"""
from __future__ import annotations

from pathlib import Path

import torch

from conftest import TINY_PLAY, TINY_WIKI, tiny_parallel, tiny_rows
from scripts.common import save_checkpoint
from scripts.demo_screenshots import TABS

# the demo's typical inputs (the chat tab's is left out: byte-level BPE reads any text, and the other vocabularies,
# and so the tiny models' random answers that some tests pin, stay as they were)
TYPED = [text for tab in TABS if tab["tab"] != "Stage 5: chat" for text in tab["type"].values()]


def stage1(folder: Path) -> Path:
    from stage1_mlp.data import Vocab
    from stage1_mlp.model import BagOfNgramsMLP, MLPConfig
    vocab = Vocab.build([text for text, _ in tiny_rows("imdb", "train")] + TYPED, ngram=2, min_freq=1)
    cfg = MLPConfig(vocab_size=len(vocab), n_classes=2, emb_dim=8, hidden_dim=8)
    vocab.save(folder / "vocab.json")
    return save(folder, {"stage": "stage1_mlp", "kind": "classifier", "dataset": "imdb", "config": cfg.to_dict(),
                         "args": {}, "model": BagOfNgramsMLP(cfg).state_dict(),
                         "vocab": {"file": "vocab.json", "size": len(vocab), "fingerprint": vocab.fingerprint()}})


def stage2(folder: Path) -> Path:
    from stage2_rnn_lstm.data import Vocab
    from stage2_rnn_lstm.model import LMConfig, RNNLanguageModel
    vocab = Vocab.build(TINY_PLAY, "char")
    cfg = LMConfig(vocab_size=len(vocab), model_type="lstm", emb_dim=8, hidden_dim=16, n_layers=1, impl="torch")
    vocab.save(folder / "vocab.json")
    return save(folder, {"stage": "stage2_rnn_lstm", "kind": "language_model", "dataset": "tiny_shakespeare", "config": cfg.to_dict(),
                         "args": {"bptt": 32}, "model": RNNLanguageModel(cfg).state_dict(),
                         "vocab": {"file": "vocab.json", "size": len(vocab), "fingerprint": vocab.fingerprint()}})


def parallel() -> tuple[list[str], list[str]]:
    triples = tiny_parallel(60, "demo") + [("A man is riding a bike.", "", "Un homme fait du vélo.")]
    return [en for en, _, _ in triples], [fr for _, _, fr in triples]


def stage3(folder: Path) -> Path:
    from stage3_attention_seq2seq.data import Vocab
    from stage3_attention_seq2seq.model import Seq2Seq, Seq2SeqConfig
    en, fr = parallel()
    src, tgt = Vocab.build(en, "en", min_freq=1), Vocab.build(fr, "fr", min_freq=1)
    cfg = Seq2SeqConfig(src_vocab_size=len(src), tgt_vocab_size=len(tgt), emb_dim=8, hidden_dim=16)
    src.save(folder / "vocab_src.json")
    tgt.save(folder / "vocab_tgt.json")
    return save(folder, {"stage": "stage3_attention_seq2seq", "kind": "translator", "dataset": "multi30k",
                         "config": cfg.to_dict(), "args": {"src": "en", "tgt": "fr"},
                         "model": Seq2Seq(cfg).state_dict(),
                         "vocab": {"files": ["vocab_src.json", "vocab_tgt.json"],
                                   "fingerprints": [src.fingerprint(), tgt.fingerprint()]}})


def stage4(folder: Path) -> Path:
    from stage4_transformer.data import Vocab
    from stage4_transformer.model import Transformer, TransformerConfig
    en, fr = parallel()
    vocab = Vocab.build(en + fr, min_freq=1, targets=fr)
    cfg = TransformerConfig(src_vocab_size=len(vocab), tgt_vocab_size=vocab.n_target, d_model=16, n_heads=2,
                            n_enc_layers=1, n_dec_layers=1, d_ff=32, share_embeddings=True)
    vocab.save(folder / "vocab.json")
    return save(folder, {"stage": "stage4_transformer", "kind": "translator", "dataset": "multi30k", "config": cfg.to_dict(),
                         "args": {"src": "en", "tgt": "fr"}, "model": Transformer(cfg).state_dict(),
                         "vocab": {"file": "vocab.json", "size": len(vocab), "fingerprint": vocab.fingerprint()}})


def stage5(folder: Path) -> Path:
    from stage5_gpt.data import tokenizer_fingerprint
    from stage5_gpt.model import GPT, GPTConfig
    from stage5_gpt.tokenizer import BPETokenizer
    tok = BPETokenizer.train(TINY_WIKI["train"] + " ".join(TYPED), 300, progress=False)
    tok.save(folder / "tokenizer.json")
    cfg = GPTConfig(vocab_size=len(tok), block_size=32, n_layer=1, n_head=2, n_embd=16, bias=False, pos="rope",
                    norm="rmsnorm", mlp="swiglu")
    return save(folder, {"stage": "stage5_gpt", "kind": "language_model", "dataset": "wikitext2", "config": cfg.to_dict(), "args": {},
                         "model": GPT(cfg).state_dict(),
                         "data": {"tokenizer": "tokenizer.json",
                                  "fingerprint": tokenizer_fingerprint(folder / "tokenizer.json")}})


def stage5_chat(folder: Path) -> Path:
    """An "instructed" GPT: its tokenizer has the chat template's tokens (its weights are as random as the others)."""
    from stage5_gpt.chat_template import SPECIAL_TOKENS
    from stage5_gpt.data import tokenizer_fingerprint
    from stage5_gpt.model import GPT, GPTConfig
    from stage5_gpt.tokenizer import BPETokenizer
    tok = BPETokenizer.train(TINY_WIKI["train"] + " ".join(TYPED), 300, SPECIAL_TOKENS, progress=False)
    tok.save(folder / "tokenizer.json")
    cfg = GPTConfig(vocab_size=len(tok), block_size=192, n_layer=1, n_head=2, n_embd=16, bias=False, pos="rope",
                    norm="rmsnorm", mlp="swiglu")
    return save(folder, {"stage": "stage5_gpt", "kind": "language_model", "dataset": "course_mix",
                         "config": cfg.to_dict(), "args": {}, "model": GPT(cfg).state_dict(), "task": "sft",
                         "data": {"tokenizer": "tokenizer.json",
                                  "fingerprint": tokenizer_fingerprint(folder / "tokenizer.json")}})


def bert_config(folder: Path):
    from stage6_bert.model import BertConfig
    from stage6_bert.tokenizer import WordPieceTokenizer
    tok = WordPieceTokenizer.train([text for text, _ in tiny_rows("sst2", "train")] + TYPED, 200)
    tok.save(folder / "tokenizer.json")
    return BertConfig(vocab_size=len(tok), max_position=64, hidden=16, n_layer=1, n_head=2, intermediate=32,
                      norm="pre")


def stage6_mlm(folder: Path) -> Path:
    from stage6_bert.model import BertPretrain
    cfg = bert_config(folder)
    return save(folder, {"stage": "stage6_bert", "kind": "masked_lm", "config": cfg.to_dict(), "args": {},
                         "model": BertPretrain(cfg).state_dict(), "tokenizer": "tokenizer.json"})


def stage6_sst2(folder: Path) -> Path:
    from stage6_bert.model import BertClassifier
    cfg = bert_config(folder)
    return save(folder, {"stage": "stage6_bert", "kind": "classifier", "task": "sst2", "config": cfg.to_dict(),
                         "num_labels": 2, "pooling": "cls", "model": BertClassifier(cfg, 2).state_dict(),
                         "tokenizer": "tokenizer.json", "args": {"max_len": 64}})


def save(folder: Path, checkpoint: dict) -> Path:
    save_checkpoint(checkpoint, folder / "best.pt")
    return folder / "best.pt"


BUILDERS = {"stage1": stage1, "stage2": stage2, "stage3": stage3, "stage4": stage4, "stage5": stage5,
            "stage6_mlm": stage6_mlm, "stage6_sst2": stage6_sst2, "stage5_chat": stage5_chat}


def stage5_chat_adapter(folder: Path, chat: Path) -> Path:
    """A LoRA adapter for the tiny instructed GPT, its B matrices non-zero so that switching it on changes answers."""
    from stage5_gpt.lora import LoRAConfig, add_lora, save_adapter
    from stage5_gpt.model import GPT, GPTConfig
    ckpt = torch.load(chat, map_location="cpu", weights_only=True)
    model = GPT(GPTConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["model"])
    for layer in add_lora(model, LoRAConfig(rank=2, alpha=4.0)).values():
        torch.nn.init.normal_(layer.lora_B, std=0.5)
    save_adapter(model, folder / "adapter.pt", base_name=str(chat))
    return folder / "adapter.pt"


def make_all(root: Path) -> dict[str, Path]:
    """{model key of scripts/demo.py's MODELS (and its CHAT and ADAPTER): the path of its tiny best.pt (adapter.pt)},
    each in its own folder under root."""
    torch.manual_seed(0)
    paths = {}
    for key, build in BUILDERS.items():
        (root / key).mkdir(parents=True, exist_ok=True)
        paths[key] = build(root / key)
    (root / "stage5_chat_adapter").mkdir(parents=True, exist_ok=True)
    paths["stage5_chat_adapter"] = stage5_chat_adapter(root / "stage5_chat_adapter", paths["stage5_chat"])
    return paths
