// A small chart of a task's last minutes (up to `windowSeconds`): memory (filled, against its limit or the highest
// reading) and CPU (a line, against 100 % of one CPU or the highest reading), drawn on a
// canvas by hand: no library, nothing inline for the Content-Security-Policy to refuse.

const MEMORY = "#3b82f6";
const CPU = "#f59e0b";

export function drawChart(canvas, samples, windowSeconds) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 160;
  const height = canvas.clientHeight || 36;
  if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
  if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
  const context = canvas.getContext("2d");
  context.setTransform(ratio, 0, 0, ratio, 0, 0);
  context.clearRect(0, 0, width, height);
  if (!samples.length) return;
  const now = samples[samples.length - 1].time;
  // The time axis grows with the readings, from half a minute up to the whole window.
  const span = Math.min(windowSeconds * 1000, Math.max(30000, now - samples[0].time));
  const x = (time) => width - ((now - time) / span) * width;
  const memoryTop = Math.max(1, ...samples.map((s) => s.limit || 0), ...samples.map((s) => s.memory || 0));
  const cpuTop = Math.max(1, ...samples.map((s) => s.cpu || 0));

  context.beginPath();
  context.moveTo(x(samples[0].time), height);
  for (const sample of samples) context.lineTo(x(sample.time), height - ((sample.memory || 0) / memoryTop) * (height - 2));
  context.lineTo(x(now), height);
  context.closePath();
  context.fillStyle = MEMORY + "55";
  context.strokeStyle = MEMORY;
  context.fill();

  context.beginPath();
  samples.forEach((sample, index) => {
    const y = height - 1 - ((sample.cpu || 0) / cpuTop) * (height - 3);
    if (index === 0) context.moveTo(x(sample.time), y);
    else context.lineTo(x(sample.time), y);
  });
  context.strokeStyle = CPU;
  context.lineWidth = 1.5;
  context.stroke();
}
