"""Reporting: metrics.json files → pandas tables (:mod:`.aggregate`) and matplotlib figures (:mod:`.figures`)."""

OPTIONAL_FIGURES = {"ev3_trajectory": "ev3", "metadistil_teacher": "metadistil"}
"""Figures drawn only when some run's metrics.json has the method-type object named here (``figures/<name>.png``)."""
