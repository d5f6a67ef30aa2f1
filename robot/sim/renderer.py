"""Offscreen rendering of the twin's fixed camera: colour, and depth as a D455 z16 stream.

One GL context and one MuJoCo render context serve every image size (the offscreen buffer is
allocated at the model's ``offwidth x offheight``), so nothing is re-created per frame. Colour and
depth come from the same render pass. The context is made current only for the duration of a
render and released afterwards, so renders may come from any thread (one at a time).
"""

from __future__ import annotations

import os
import threading

import numpy as np

from robot.interfaces import Intrinsics
from robot.units import deg_to_rad, m_to_mm

Z16_MAX_MM = 65535


class CameraRenderer:
    """Renders the model's fixed camera ``camera_name`` (or another of its cameras, named per render) with shadows
    and anti-aliasing off."""

    def __init__(self, model, camera_name: str) -> None:
        import mujoco

        _check_headless_backend(mujoco)
        self._mujoco = mujoco
        self.model = model
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._camera_name = camera_name
        self._camera.fixedcamid = self._camera_id(camera_name)
        self.max_width, self.max_height = model.vis.global_.offwidth, model.vis.global_.offheight
        model.vis.quality.offsamples = 0  # anti-aliasing off: several times faster on llvmpipe
        self._option = mujoco.MjvOption()
        self._scene = mujoco.MjvScene(model, maxgeom=1000)
        self._scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        self._scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        self._gl = mujoco.GLContext(self.max_width, self.max_height)
        self._render_lock = threading.Lock()
        with self._gl_current():
            self._context = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_100)
            mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._context)
            self._context.readDepthMap = mujoco.mjtDepthMap.mjDEPTH_ZEROFAR
        extent = model.stat.extent
        self._near_m = float(model.vis.map.znear * extent)
        self._far_m = float(model.vis.map.zfar * extent)

    def _gl_current(self):
        return self._gl.as_current()

    def _camera_id(self, camera_name: str) -> int:
        camera_id = self._mujoco.mj_name2id(self.model, self._mujoco.mjtObj.mjOBJ_CAMERA, camera_name)
        if camera_id < 0:
            raise ValueError(f"the model has no camera named {camera_name!r}")
        return camera_id

    def render(self, data, physics_lock, width: int, height: int, depth: bool,
               camera_name: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """RGB uint8 (H, W, 3) and, if asked, z16 depth uint16 (H, W) in mm (0 = no return) of ``data``, seen by
        ``camera_name`` (default: the renderer's camera).

        The state is copied into the render scene under ``physics_lock`` (a few hundred us); the
        rasterisation itself runs without it, so physics is not held up by a render.
        """
        if not (0 < width <= self.max_width and 0 < height <= self.max_height):
            raise ValueError(f"render size {width}x{height} must be positive and within the offscreen buffer "
                             f"{self.max_width}x{self.max_height} (see robot/sim/model.py <global offwidth>)")
        mujoco = self._mujoco
        rect = mujoco.MjrRect(0, 0, width, height)
        rgb = np.empty((height, width, 3), dtype=np.uint8)
        zbuf = np.empty((height, width), dtype=np.float32) if depth else None
        camera_id = self._camera_id(camera_name or self._camera_name)
        with self._render_lock:
            self._camera.fixedcamid = camera_id
            with physics_lock:
                mujoco.mjv_updateScene(self.model, data, self._option, None, self._camera,
                                       mujoco.mjtCatBit.mjCAT_ALL, self._scene)
            with self._gl_current():
                mujoco.mjr_render(rect, self._scene, self._context)
                mujoco.mjr_readPixels(rgb, zbuf, rect, self._context)
        rgb = np.ascontiguousarray(rgb[::-1])  # OpenGL rows run bottom-up
        if zbuf is None:
            return rgb, None
        return rgb, self._to_z16(zbuf[::-1])

    def _to_z16(self, zbuf: np.ndarray) -> np.ndarray:
        """Reversed-Z buffer -> distance along the optical axis in mm, 0 where nothing was hit (like z16)."""
        # Reversed Z stores c' / depth + const; float32 keeps well under 0.01 mm here (depths of 0.1..10 m).
        near, far = self._near_m, self._far_m
        c = np.float32(near / (far - near))
        d_mm = np.float32(m_to_mm(far * near / (far - near)))
        valid = zbuf > 0.0  # 0 is the far plane: nothing was hit
        depth_mm = np.zeros(zbuf.shape, dtype=np.float32)
        np.divide(d_mm, zbuf + c, out=depth_mm, where=valid)
        depth_mm[depth_mm >= min(Z16_MAX_MM, m_to_mm(far) * 0.999)] = 0
        return np.rint(depth_mm).astype(np.uint16)

    def close(self) -> None:
        if self._context is not None:
            with self._gl_current():
                self._context.free()
            self._context = None
        if self._gl is not None:
            self._gl.free()
            self._gl = None


def _check_headless_backend(mujoco) -> None:
    """MuJoCo picks its GL backend when first imported; GLFW needs a display this machine may not have."""
    backend = getattr(mujoco.GLContext, "__module__", "")
    if backend.startswith("mujoco.glfw") and not os.environ.get("DISPLAY"):
        raise RuntimeError("MuJoCo was imported with the GLFW backend and there is no display: set MUJOCO_GL=egl "
                           "in the environment (or import robot.sim.twin before mujoco) to render headless")


def pinhole_intrinsics(width: int, height: int, fovy_deg: float) -> Intrinsics:
    """MuJoCo's camera as a pinhole: square pixels, principal point at the image centre.

    Pixel centres sit at integer coordinates (librealsense's convention), so the centre of a
    W x H image is ((W - 1) / 2, (H - 1) / 2).
    """
    fy = (height / 2.0) / np.tan(deg_to_rad(fovy_deg) / 2.0)
    return Intrinsics(width=width, height=height, fx=float(fy), fy=float(fy), ppx=(width - 1) / 2.0,
                      ppy=(height - 1) / 2.0)
