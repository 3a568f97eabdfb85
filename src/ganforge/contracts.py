"""The files one stage leaves for the next, named once: what train writes to ``models/train`` and optimize to
``models/optimized``. (Prepare's, reference's and package's manifests are named by the modules that read and
write them: ``data.prepared``, ``evaluation.reference`` and ``packaging.package``.)"""

# train (models/train)
LAST_GENERATOR = "generator.safetensors"  # the last EMA generator
BEST_GENERATOR = "generator-best.safetensors"  # the EMA generator with the best in-loop FID
CHECKPOINT = "checkpoint.pt"  # everything to resume from, the discriminator too (optimize's distillation reads it)

# optimize (models/optimized)
WINNER_FILE = "generator.safetensors"  # the winner's float weights (a pruned winner with its smaller shapes)
BASELINE_FILE = "baseline.safetensors"  # the trained generator the variants were built from
RECIPE_FILE = "recipe.json"  # how to rebuild the winner's variant from the float weights
REPORT_FILE = "optimize.json"  # every variant's measurements and the scoring protocol
