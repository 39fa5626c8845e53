"""Background work: Celery tasks (:mod:`.jobs`), the app (:mod:`.celery_app`), APScheduler
schedules (:mod:`.scheduler`) and the ``shoal worker`` / ``shoal scheduler`` commands
(:mod:`.cli_commands`). Nothing here connects to anything at import.
"""
