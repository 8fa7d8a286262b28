"""The demo's own: the traffic simulator, CLINC150, the tiny test base models, ``flywheel demo``. No
production module imports it."""
