"""A trained run or an exported program on labelled data (:mod:`~mobilenets.evaluation.evaluate`)
and on image files (:mod:`~mobilenets.evaluation.predict`)."""
