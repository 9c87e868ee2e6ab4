"""Stage 1 "implement it yourself" exercises: each file holds a layer of stage1_mlp/model.py with its body removed.

Fill one in, then grade it: MY_LLM_EXERCISES=1 python -m pytest tests/test_exercises_stage1.py
(see stage1_mlp/exercises.md).
"""
