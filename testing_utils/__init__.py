"""rykov8/ssd_keras's ``testing_utils`` folder: ``from testing_utils.videotest import VideoTest``."""
