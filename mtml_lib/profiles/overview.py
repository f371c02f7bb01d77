"""Profiles of notebook 00_overview: the tour only draws samples, so the profiles differ in size alone."""

from dataclasses import dataclass


@dataclass(frozen=True)
class OverviewProfile:
    n_tasks: int  # toy tasks drawn for the task-structure figure
    n_points: int  # points per task in that figure


PROFILES = {
    "smoke": OverviewProfile(n_tasks=4, n_points=20),
    "quick": OverviewProfile(n_tasks=6, n_points=40),
    "full": OverviewProfile(n_tasks=6, n_points=80),
}
