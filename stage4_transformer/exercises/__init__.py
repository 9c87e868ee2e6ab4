"""Stage 4's "implement it yourself" exercises (see stage4_transformer/exercises.md). Each file holds a function of the
course with its body removed; `MY_LLM_EXERCISES=1 python -m pytest tests/test_exercises_stage4.py` grades your
version."""
