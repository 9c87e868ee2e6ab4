"""Stage 6's "implement it yourself" exercise (see stage6_bert/exercises.md). The file holds a function of the course
with its body removed; `MY_LLM_EXERCISES=1 python -m pytest tests/test_exercises_stage6.py` grades your version."""
