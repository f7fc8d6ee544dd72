"""The recurrent refiner's evidence: synthetic reasoning tasks with a curriculum (``tasks``), the
refinement report that trains and compares three models on them (``report``), latent-trajectory
pictures (``inspect``) and the refiner's generation cost against Two-Tower (``refine_cost``)."""
