// A small live line plot on a canvas: shares (0 to 1) over the last minutes, no libraries.

/**
 * @param {HTMLCanvasElement} canvas  sized by CSS; drawn at the device's pixel ratio
 * @param {{colour: string, points: {t: number, value: number}[]}[]} series  t in seconds
 * @param {number} now  seconds, the right edge
 * @param {number} spanSeconds  the width of the plot in time
 */
export function drawSharePlot(canvas, series, now, spanSeconds) {
  const ratio = window.devicePixelRatio || 1;
  const width = Math.max(1, Math.round(canvas.clientWidth * ratio));
  const height = Math.max(1, Math.round(canvas.clientHeight * ratio));
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width;
    canvas.height = height;
  }
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, width, height);
  const pad = 4 * ratio;
  const x = (t) => pad + ((t - (now - spanSeconds)) / spanSeconds) * (width - 2 * pad);
  const y = (value) => height - pad - value * (height - 2 * pad);

  // guides at 0, 50 and 100 %
  context.strokeStyle = "rgba(255, 255, 255, 0.14)";
  context.lineWidth = ratio;
  for (const level of [0, 0.5, 1]) {
    context.beginPath();
    context.moveTo(pad, y(level));
    context.lineTo(width - pad, y(level));
    context.stroke();
  }
  context.fillStyle = "rgba(230, 235, 245, 0.7)";
  context.font = `${10 * ratio}px system-ui, sans-serif`;
  context.textBaseline = "top";
  context.fillText("100 %", pad + 2 * ratio, y(1) + 2 * ratio);

  context.lineWidth = 2 * ratio;
  context.lineJoin = "round";
  for (const { colour, points } of series) {
    const visible = points.filter((point) => point.t >= now - spanSeconds);
    if (visible.length === 0) continue;
    context.strokeStyle = colour;
    context.beginPath();
    visible.forEach((point, i) => {
      if (i === 0) context.moveTo(x(point.t), y(point.value));
      else context.lineTo(x(point.t), y(point.value));
    });
    context.stroke();
  }
}
