"""Stage 3 "implement it yourself" exercise: the attention of stage3_attention_seq2seq/model.py with its body removed.

Fill it in, then grade it: MY_LLM_EXERCISES=1 python -m pytest tests/test_exercises_stage3.py
(see stage3_attention_seq2seq/exercises.md).
"""
