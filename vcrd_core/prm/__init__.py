"""Process reward models where none exists: Monte-Carlo step labels (`vcrd prm label`), a value-head PRM fitted
on them (`vcrd prm train`) and the calibration report of any judges on held-out labels (`vcrd prm calibrate`)."""
