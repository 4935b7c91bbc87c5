"""A plugin module that provides the recipe `second_recipe`."""

import tokenprune


@tokenprune.hookimpl
def tokenprune_strategies():
    return [tokenprune.Recipe("second_recipe", "attention | top_k", "a recipe of the second plugin")]
