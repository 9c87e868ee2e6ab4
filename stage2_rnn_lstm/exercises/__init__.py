"""Stage 2 "implement it yourself" exercise: the LSTM cell of stage2_rnn_lstm/model.py with its body removed.

Fill it in, then grade it: MY_LLM_EXERCISES=1 python -m pytest tests/test_exercises_stage2.py
(see stage2_rnn_lstm/exercises.md).
"""
