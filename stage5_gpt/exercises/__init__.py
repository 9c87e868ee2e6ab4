"""Stage 5's "implement it yourself" exercises (see stage5_gpt/exercises.md). Each file holds a function of the course
with its body removed; `MY_LLM_EXERCISES=1 python -m pytest tests/test_exercises_stage5.py` grades your version."""
