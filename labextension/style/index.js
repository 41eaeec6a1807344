import './base.css';
import './reviewkeys.css';
