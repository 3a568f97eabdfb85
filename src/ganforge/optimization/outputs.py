"""What the optimize stage leaves in its output directory (``models/optimized``), for the stages that read it."""

WINNER_FILE = "generator.safetensors"  # the winner's float weights (a pruned winner with its smaller shapes)
BASELINE_FILE = "baseline.safetensors"  # the trained generator the variants were built from
RECIPE_FILE = "recipe.json"  # how to rebuild the winner's variant from the float weights
REPORT_FILE = "optimize.json"  # every variant's measurements and the scoring protocol
